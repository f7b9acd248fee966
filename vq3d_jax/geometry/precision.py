"""The one dtype rule of the geometry code: compute in float32 at least.

bf16 poses lose the camera centre at scene scale, and bf16 depths and transmittances
lose the far field; float64 inputs (numpy references, tests) stay float64.
"""

from __future__ import annotations

import jax.numpy as jnp


def at_least_float32(x) -> jnp.ndarray:
    """x as an array of float32, or of its own dtype when that is wider (float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
