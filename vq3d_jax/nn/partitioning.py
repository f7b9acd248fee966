"""Logical axis names on parameters, which the training code maps to a device mesh.

Every parameter of the library is created through `partitioned`, so sharding rules
(`train/sharding.py`) can place it; with no rules active the names are inert.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn


def partitioned(init_fn: Callable, names: tuple[str | None, ...]) -> Callable:
    """Shorthand for ``nn.with_logical_partitioning`` (every param goes through it)."""
    return nn.with_logical_partitioning(init_fn, names)
