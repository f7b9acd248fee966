"""The start and the end of a multi-process run (`jax.distributed`).

The end is collective. At interpreter exit JAX shuts its distributed runtime down
through a barrier that every process must reach within the runtime's shutdown timeout;
a process that reached it while another was still busy aborts when it expires
(`DEADLINE_EXCEEDED: Barrier timed out`, then `Fatal Python error: Aborted`). A host that
is merely slower at the end of a finished run (a longer checkpoint commit, a slower
disk, a busier node) must not turn it into an abort, so each process first finishes its
own work (the loop waits for its checkpoint commits and closes its metric writers),
then waits for the others at `finish`'s barrier, with a timeout sized for clusters
(`--exit_timeout`), and only then do all shut the runtime down, together.
"""

from __future__ import annotations

import jax
from absl import logging
from jax._src import distributed as jax_distributed

# The barrier every process of a finished run meets before the runtime shuts down.
END_OF_RUN_BARRIER = "vq3d_jax/end_of_run"


class EndOfRunTimeout(RuntimeError):
    """The other processes did not finish within the exit timeout of this one."""


def initialize(*, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, initialization_timeout_s: int,
               exit_timeout_s: int) -> None:
    """`jax.distributed.initialize`: from the arguments, or from the cluster's environment
    (TPU pods, SLURM) where they are None. JAX's own shutdown barrier gets the exit timeout
    too, so that the runtime never gives up on a process sooner than `finish` does."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, initialization_timeout=initialization_timeout_s,
        shutdown_timeout_seconds=exit_timeout_s)


def finish(exit_timeout_s: int) -> None:
    """Waits up to `exit_timeout_s` for every process to get here, then shuts the
    distributed runtime down. Call it once a process's work is done and written; a
    no-op for a one-process run. `EndOfRunTimeout` when the others do not come."""
    if not jax.distributed.is_initialized():
        return
    if jax.process_count() > 1:
        logging.info("Process %d/%d is done: waiting up to %d s for the others to finish.",
                     jax.process_index(), jax.process_count(), exit_timeout_s)
        try:
            jax_distributed.global_state.client.wait_at_barrier(
                END_OF_RUN_BARRIER, exit_timeout_s * 1000)
        except Exception as err:  # noqa: BLE001 - the runtime's errors have no one type.
            raise EndOfRunTimeout(
                f"process {jax.process_index()} finished its work, but the others did not "
                f"reach the end of the run within --exit_timeout={exit_timeout_s} s "
                f"({' '.join(str(err).split())[:300]}). This process's checkpoints and "
                "metrics are written; look at the other processes' logs."
            ) from err
    jax.distributed.shutdown()
