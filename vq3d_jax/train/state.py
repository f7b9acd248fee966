"""The train state every task uses: a plain pytree the loop shards and checkpoints."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


class TrainState(struct.PyTreeNode):
    """`params` and `opt_state` are dicts keyed by network (e.g. generator, discriminator)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key; each step folds in `step`, so resume is exact
    # Non-gradient statistics a task keeps across steps (e.g. codebook usage EMAs).
    model_state: Any = struct.field(default_factory=dict)
