"""What the generic loop needs from a trainable thing. The loop never names a model."""

from __future__ import annotations

from typing import Any, Protocol

import jax


class Task(Protocol):
    """A task builds its networks from the config and owns their maths.

    Every method is traced under `jax.jit` by the loop, which supplies the
    shardings; batches arrive as global arrays.
    """

    #: Batch keys the train step reads (others the pipeline yields stay on host).
    train_keys: tuple[str, ...]
    #: Batch keys the eval and sample steps read (plus `mask` for eval).
    eval_keys: tuple[str, ...]

    def init_state(self, rng: jax.Array) -> Any:
        """The initial state; parameters boxed with logical axis names."""

    def train_step(self, state: Any, batch: dict[str, jax.Array]) -> tuple[Any, dict]:
        """One optimisation step → (new state, scalar metrics)."""

    def eval_step(self, state: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-example metrics, each [batch]; the loop masks padding and averages."""

    def sample(self, state: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """uint8 pictures of what the model produces: [H,W,C] → PNG, [T,H,W,C] → GIF."""
