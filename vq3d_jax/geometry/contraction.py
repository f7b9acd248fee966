"""Scene contraction for unbounded scenes (mip-NeRF 360, arXiv 2111.12077, eq. 10).

contract(x) = x                           if |x| <= 1
            = (2 - 1/|x|) x / |x|          otherwise,

mapping R^3 onto the open ball of radius 2 (VQ3D's "contracted triplane" spans [-2, 2]^3;
``contract_to_unit`` rescales it to the tri-plane's [-1, 1]^3).

Computed in float32 (bf16/fp16 inputs are upcast and the result cast back): |x|^2
overflows float32 only beyond |x| ~ 1.8e19, far past any sample distance the samplers
return.
"""

from __future__ import annotations

import jax.numpy as jnp

from vq3d_jax.geometry.precision import at_least_float32

_EPS = 1e-12  # floor on |x|^2: keeps the unused outside branch finite at x = 0


def contract(x, eps: float = _EPS) -> jnp.ndarray:
    """mip-NeRF 360 eq. 10 on points [..., 3]; |result| < 2.

    Outside the unit ball (2 - 1/|x|) / |x| = (2|x| - 1) / |x|^2: one sqrt and one
    division of the clamped |x|^2, so both ``where`` branches (and their gradients) stay
    finite at x = 0 and for huge |x|.
    """
    dtype = jnp.asarray(x).dtype
    x = at_least_float32(x)
    sq = jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps)
    scale = (2.0 * jnp.sqrt(sq) - 1.0) / sq
    return jnp.where(sq <= 1.0, x, scale * x).astype(dtype)


def contract_to_unit(x, eps: float = _EPS) -> jnp.ndarray:
    """contract(x) / 2 ∈ (-1, 1)^3: tri-plane coordinates (mip-NeRF 360 eq. 10, halved)."""
    return 0.5 * contract(x, eps)


def inverse_contract(z, eps: float = 1e-6) -> jnp.ndarray:
    """Inverse of eq. 10 for |z| < 2: |x| = 1 / (2 - |z|), x = z |x| / |z|.

    ``2 - |z|`` is floored at ``eps`` so points on the radius-2 sphere map to a large
    finite distance (1/eps) rather than inf.
    """
    dtype = jnp.asarray(z).dtype
    z = at_least_float32(z)
    sq = jnp.maximum(jnp.sum(z * z, -1, keepdims=True), _EPS)
    norm = jnp.sqrt(sq)
    scale = 1.0 / (jnp.maximum(2.0 - norm, eps) * norm)
    return jnp.where(sq <= 1.0, z, scale * z).astype(dtype)
