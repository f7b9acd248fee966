"""Graceful preemption: SIGTERM → finish the current step, save, exit 0.

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
        logging.warning("SIGTERM received: finishing the current step, then saving.")
        self._requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._requested

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
