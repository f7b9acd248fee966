"""`python tests/slow_end_of_run.py SECONDS --flags…`: the command line, its process's end
of the run made SECONDS slower (as a host whose last checkpoint commit takes longer) and
JAX's runtime shutdown barrier cut to `SHUTDOWN_BARRIER_S` (its default is 300 s), so that
the delay outlasts it: the launcher of test_multiprocess.py's slowed process."""

import os
import runpy
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402

from vq3d_jax.train import loop  # noqa: E402

SHUTDOWN_BARRIER_S = 4

_initialize, _train = jax.distributed.initialize, loop.train


def _initialize_with_a_short_shutdown_barrier(*args, **kwargs):
    _initialize(*args, **{**kwargs, "shutdown_timeout_seconds": SHUTDOWN_BARRIER_S})


def _train_then_wait(*args, **kwargs):
    result = _train(*args, **kwargs)  # checkpoints committed, metrics closed
    time.sleep(_DELAY_S)
    return result


if __name__ == "__main__":
    _DELAY_S = float(sys.argv.pop(1))
    jax.distributed.initialize = _initialize_with_a_short_shutdown_barrier
    loop.train = _train_then_wait
    runpy.run_module("vq3d_jax.main", run_name="__main__", alter_sys=True)
