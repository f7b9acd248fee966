"""The guard against non-finite updates (`config.nonfinite`): the train step that flags
a NaN/inf loss, gradient norm or updated state and, with 'skip', keeps the old state; and
the loop's bookkeeping of those flags, which stops the run or counts the skipped updates.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


class NonFiniteLossError(FloatingPointError):
    """A loss, the gradient norm or the state became NaN/inf (`config.nonfinite='stop'`);
    that state is not saved, earlier checkpoints stay intact."""


# What `config.nonfinite` may be: at a non-finite update, stop the run or skip the update.
NONFINITE_MODES = ("stop", "skip")
# Added to the step's metrics by `guarded` (compiled by `runtime.compile_train_step`),
# taken out again by the loop.
FINITE = "train/update_finite"


def nonfinite_mode(config) -> str:
    if config.nonfinite not in NONFINITE_MODES:
        raise ValueError(f"config.nonfinite={config.nonfinite!r}: choose one of "
                         f"{NONFINITE_MODES}.")
    return config.nonfinite


def _checked_metric(name: str) -> bool:
    """The step metrics whose finiteness says whether an update is sound."""
    return "loss" in name or name == "train/grad_norm"


def guarded(train_step: Callable, *, skip: bool) -> Callable:
    """`train_step` that also says whether its update is finite and, with `skip`, keeps
    the old state when not. The state is checked too, because not every gradient has a
    norm in the metrics (a discriminator's NaN gradient shows only in its new weights)."""

    def step(state, batch):
        new_state, metrics = train_step(state, batch)
        finite = _all_finite(([v for k, v in metrics.items() if _checked_metric(k)],
                              new_state))
        if skip:  # the donated `state` is still readable here; XLA reuses it afterwards
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     new_state, state)
        return new_state, {**metrics, FINITE: finite}

    return step


def _all_finite(tree) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


class NonFiniteSteps:
    """The steps whose update was not finite, fetched from the device lazily: the flags
    wait there until the loop next logs, saves, evaluates or samples, so that checking
    them never stalls the dispatch of the next step."""

    def __init__(self, *, skip: bool, skipped: int):
        self.skip = skip
        self.skipped = skipped  # updates skipped since the run began, resumes included
        self._pending: list[tuple[int, jax.Array, dict]] = []

    def add(self, step: int, finite: jax.Array, metrics: dict) -> None:
        self._pending.append((step, finite, metrics))

    def check(self) -> None:
        """'stop': NonFiniteLossError naming the first bad step; 'skip': each bad step
        is counted and logged with what was not finite."""
        pending, self._pending = self._pending, []
        flags = jax.device_get([finite for _, finite, _ in pending])
        for (step, _, metrics), finite in zip(pending, flags, strict=True):
            if finite:
                continue
            what = _nonfinite_names(metrics)
            if not self.skip:
                raise NonFiniteLossError(
                    f"Non-finite {what} at step {step}: stopping without saving this state. "
                    "The last good checkpoint is kept; lower the learning rate, check the "
                    "data, or set --config.nonfinite=skip to skip such updates."
                )
            self.skipped += 1
            logging.warning("Step %d: non-finite %s; update skipped (%d skipped so far).",
                            step, what, self.skipped)


def _nonfinite_names(metrics: dict) -> str:
    values = jax.device_get(metrics)
    bad = [k for k, v in sorted(values.items())
           if _checked_metric(k) and not np.all(np.isfinite(v))]
    return str(bad) if bad else "updated state (losses and gradient norm finite)"
