"""Graceful preemption: SIGTERM → finish the current step, save, exit 0.

A SIGTERM during an eval or FID pass abandons the pass between two batches
(`requested`), so that the save happens within the grace period.
Single process: our own signal flag. Several processes: JAX's preemption sync
point (needs `jax.distributed.initialize`), so that every host stops at the
same step and the collective checkpoint is consistent.
"""

from __future__ import annotations

import signal

import jax
from absl import logging


class PreemptionWatch:
    def __init__(self):
        self._requested = False
        self._previous = None

    def install(self) -> PreemptionWatch:
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum, frame):  # noqa: ARG002 - signal handler signature.
        logging.warning("SIGTERM received: finishing the current step (or abandoning the "
                        "eval pass), then saving.")
        self._requested = True

    @property
    def requested(self) -> bool:
        """SIGTERM arrived (single process), for a pass between steps to check per batch.

        Several processes learn of a preemption only at a step's sync point, which every
        one must reach at the same step: their eval passes run to the end.
        """
        return self._requested

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._requested

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
