"""Volume rendering of samples along rays (NeRF, arXiv 2003.08934, eq. 3).

    C = Σ_i T_i (1 - exp(-σ_i δ_i)) c_i,   T_i = exp(-Σ_{j<i} σ_j δ_j),

with δ_i the interval lengths from the edges. An infinite last interval (far = inf)
makes that sample absorb everything left (alpha = 1 for σ > 0) without NaN: δ is clamped
to ``_BIG_DELTA``. Computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import jax.numpy as jnp

from vq3d_jax.geometry.precision import at_least_float32

_BIG_DELTA = 1e10  # stands in for an infinite interval: σ δ stays finite, exp(-σ δ) = 0
_TINY = 1e-10


def interval_midpoints(t_edges) -> jnp.ndarray:
    """Representative depth [..., S] of each interval [t_i, t_{i+1}].

    The midpoint; an interval reaching inf uses 2 t_i instead, its disparity midpoint
    (where ``stratified_samples(randomized=False)`` puts it).
    """
    t_edges = at_least_float32(t_edges)
    lo, hi = t_edges[..., :-1], t_edges[..., 1:]
    finite = jnp.isfinite(hi)
    # The inner where keeps inf out of the unused branch (and out of its gradient).
    return jnp.where(finite, 0.5 * (lo + jnp.where(finite, hi, lo)), 2.0 * lo)


def volume_render(
    densities,
    features,
    t_edges,
    background=None,
    t_samples=None,
    delta_scale=None,
):
    """Alpha-composites per-sample densities and colours/features along rays (NeRF eq. 3).

    Args:
      densities: σ [..., S] >= 0, per unit of distance.
      features: colours or features [..., S, C].
      t_edges: [..., S + 1] ascending interval edges (the last may be inf).
      background: optional [..., C] (broadcastable) seen through the remaining
        transmittance T_final; ``None`` composites over zero.
      t_samples: optional [..., S] depths used for ``depth``/``disparity`` (e.g. where σ
        was evaluated); default :func:`interval_midpoints`.
      delta_scale: optional [...] factor on δ, e.g. |d| from ``normalize_directions``
        when the edges are z-depths but σ is per metric distance.

    Returns a dict (all float32):
      ``alphas`` [..., S] 1 - exp(-σ_i δ_i); ``transmittance`` [..., S] T_i (light reaching
      interval i); ``final_transmittance`` [...] T after the last interval;
      ``weights`` [..., S] w_i = T_i alpha_i; ``opacity`` [...] Σ w_i = 1 - T_final;
      ``color`` [..., C] Σ w_i c_i (+ T_final · background); ``depth`` [...] Σ w_i t_i
      (expected depth, the background contributes nothing); ``depth_normalized`` depth /
      opacity; ``disparity`` [...] Σ w_i / t_i (the background at infinity adds 0).
    """
    sigma = jnp.maximum(at_least_float32(densities), 0.0)
    feats = at_least_float32(features)
    t_edges = at_least_float32(t_edges)
    delta = jnp.minimum(t_edges[..., 1:] - t_edges[..., :-1], _BIG_DELTA)  # inf - x = inf
    if delta_scale is not None:
        delta = delta * at_least_float32(delta_scale)[..., None]
    optical = sigma * delta  # σ_i δ_i
    # Exclusive cumulative sum: T_i uses the intervals strictly before i.
    accum = jnp.cumsum(optical, -1)
    transmittance = jnp.exp(-jnp.concatenate([jnp.zeros_like(accum[..., :1]), accum[..., :-1]], -1))
    final_transmittance = jnp.exp(-accum[..., -1])
    alphas = -jnp.expm1(-optical)  # 1 - exp(-σδ), accurate for small σδ
    weights = transmittance * alphas

    color = jnp.sum(weights[..., None] * feats, -2)
    if background is not None:
        color = color + final_transmittance[..., None] * at_least_float32(background)
    t_mid = interval_midpoints(t_edges) if t_samples is None else at_least_float32(t_samples)
    opacity = jnp.sum(weights, -1)
    depth = jnp.sum(weights * t_mid, -1)
    return {
        "alphas": alphas,
        "transmittance": transmittance,
        "final_transmittance": final_transmittance,
        "weights": weights,
        "opacity": opacity,
        "color": color,
        "depth": depth,
        "depth_normalized": depth / jnp.maximum(opacity, _TINY),
        "disparity": jnp.sum(weights / jnp.maximum(t_mid, _TINY), -1),
    }
