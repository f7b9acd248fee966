"""Ray sampling: stratified in disparity, hierarchical inverse-CDF resampling.

Sample layout: distances are ray parameters ``t`` [..., S] sorted ascending along the last
axis, with interval edges [..., S + 1]; sample i lies in [edges[i], edges[i+1]]. With the
library's z = 1 ray directions (``cameras.pixel_rays``) ``t`` is the z-depth.

Infinite far planes are handled in disparity s = 1/t, where t = inf is s = 0: edges may
be inf (the last one), but every returned *sample* is finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vq3d_jax.geometry.precision import at_least_float32

# Largest float32 below 1: caps jittered fractions so a sample never reaches an inf edge.
_ONE_MINUS = 1.0 - 2.0**-24


def _reciprocal(x) -> jnp.ndarray:
    """t <-> disparity; IEEE 1/inf = 0 and 1/0 = inf are exactly the far-plane cases."""
    return 1.0 / x


def stratified_samples(
    rng, near, far, num_samples: int, batch_shape=(), randomized: bool = True,
    space: str = "disparity",
):
    """Stratified samples, by default uniform in disparity between 1/near and 1/far (far
    may be inf).

    The disparity range is cut into ``num_samples`` equal bins (NeRF arXiv 2003.08934
    §4 stratified sampling, eq. 2, applied to s = 1/t as in mip-NeRF 360 / VQ3D) and one
    sample drawn uniformly in disparity within each bin (``randomized=False``: the bin's
    disparity midpoint). ``near``/``far`` broadcast against ``batch_shape``.
    ``space='depth'``: bins and draws uniform in t instead (NeRF's own stratification,
    EG3D's bounded ray range; far must be finite).

    Returns ``(t, t_edges)``: t [*batch, S] ascending and finite; t_edges [*batch, S + 1]
    ascending, t_edges[..., 0] = near, t_edges[..., -1] = far (inf when far is inf).
    """
    near, far = at_least_float32(near), at_least_float32(far)
    batch_shape = tuple(jnp.broadcast_shapes(tuple(batch_shape), near.shape, far.shape))
    if space == "disparity":
        to_space, back = _reciprocal, _reciprocal
    elif space == "depth":
        to_space = back = lambda x: x  # noqa: E731
    else:
        raise ValueError(f"space must be 'disparity' or 'depth', got {space!r}")
    s_near = jnp.broadcast_to(to_space(near), batch_shape)[..., None]
    s_far = jnp.broadcast_to(to_space(far), batch_shape)[..., None]  # 0 for far = inf
    steps = jnp.linspace(0.0, 1.0, num_samples + 1, dtype=s_near.dtype)
    s_edges = s_near + (s_far - s_near) * steps  # descending disparity / ascending depth
    if randomized:
        frac = jax.random.uniform(rng, batch_shape + (num_samples,), s_near.dtype)
        frac = jnp.minimum(frac, _ONE_MINUS)  # s > 0 even in the bin that ends at s = 0
    else:
        frac = jnp.full(batch_shape + (num_samples,), 0.5, s_near.dtype)
    s = s_edges[..., :-1] + (s_edges[..., 1:] - s_edges[..., :-1]) * frac
    t_edges = back(s_edges)
    # Pin the end edges to the inputs exactly (1/(1/near) may round off near).
    t_edges = t_edges.at[..., 0].set(jnp.broadcast_to(near, batch_shape))
    t_edges = t_edges.at[..., -1].set(jnp.broadcast_to(far, batch_shape))
    return back(s), t_edges


def blur_pool_weights(weights, padding: float) -> jnp.ndarray:
    """mip-NeRF's resampling weights (arXiv 2103.13415 §3.2, "blurpool"):
    w'_k = ½(max(w_{k−1}, w_k) + max(w_k, w_{k+1})) + padding, the ends padded with
    their own weight. A 2-tap max then a 2-tap mean widen every peak by a bin on each
    side; the padding keeps every bin drawable. EG3D's importance sampler does the same
    (padding 0.01)."""
    w = at_least_float32(weights)
    padded = jnp.concatenate([w[..., :1], w, w[..., -1:]], -1)
    pooled = jnp.maximum(padded[..., :-1], padded[..., 1:])  # [..., K + 1]
    return 0.5 * (pooled[..., :-1] + pooled[..., 1:]) + padding


def sample_pdf(
    rng,
    bin_edges,
    weights,
    num_samples: int,
    randomized: bool = True,
    space: str = "disparity",
):
    """Inverse-CDF samples from piecewise-constant weights over bins.

    NeRF §5.2 hierarchical sampling: eq. 5's normalised weights as a piecewise-constant
    PDF along the ray.

    ``bin_edges`` [..., B + 1] ascending (the last may be inf), ``weights`` [..., B] >= 0
    (e.g. the coarse pass's rendering weights). Bin i is drawn with probability
    w_i / Σw (uniform over bins when Σw = 0); a zero-weight bin gets no samples.

    Within a bin the density is constant in ``space``: 'disparity' (default; s = 1/t, so
    inf edges are s = 0 and need no special case, and it matches the uniform-in-disparity
    coarse samples) or 'depth' (the original NeRF; all edges must be finite).

    The u's are stratified, u_j = (j + U_j) / N (midpoints without ``randomized``), so the
    result is sorted ascending and its empirical CDF is within 1/N of the exact one.
    Returns t [..., N], finite, under ``stop_gradient`` (no gradient through resampling).
    """
    edges, weights = at_least_float32(bin_edges), at_least_float32(weights)
    edges, weights = jax.lax.stop_gradient(edges), jax.lax.stop_gradient(weights)
    if space == "disparity":
        coords, back = 1.0 / edges, _reciprocal
    elif space == "depth":
        coords, back = edges, lambda x: x
    else:
        raise ValueError(f"space must be 'disparity' or 'depth', got {space!r}")
    num_bins = weights.shape[-1]
    batch = jnp.broadcast_shapes(edges.shape[:-1], weights.shape[:-1])
    coords = jnp.broadcast_to(coords, batch + (num_bins + 1,))
    weights = jnp.broadcast_to(jnp.maximum(weights, 0.0), batch + (num_bins,))

    total = jnp.sum(weights, -1, keepdims=True)
    weights = jnp.where(total > 0.0, weights, 1.0)  # all-zero rays: uniform over bins
    csum = jnp.cumsum(weights, -1)
    # Dividing by the last cumulative sum makes trailing zero-weight bins exactly 1.0.
    cdf = jnp.concatenate([jnp.zeros(batch + (1,), csum.dtype), csum / csum[..., -1:]], -1)

    if randomized:
        jitter = jax.random.uniform(rng, batch + (num_samples,), cdf.dtype)
    else:
        jitter = jnp.full(batch + (num_samples,), 0.5, cdf.dtype)
    u = jnp.minimum((jnp.arange(num_samples, dtype=cdf.dtype) + jitter) / num_samples, _ONE_MINUS)

    # Bin index = #{k >= 1 : cdf_k <= u}: the last bin whose cdf_i <= u, which skips bins
    # of zero mass (cdf_i = cdf_{i+1}). A broadcast compare, no searchsorted: batches and
    # vectorises on every backend.
    idx = jnp.sum(cdf[..., None, 1:] <= u[..., :, None], -1)
    idx = jnp.minimum(idx, num_bins - 1)
    cdf_lo = jnp.take_along_axis(cdf, idx, -1)
    cdf_hi = jnp.take_along_axis(cdf, idx + 1, -1)
    c_lo = jnp.take_along_axis(coords, idx, -1)
    c_hi = jnp.take_along_axis(coords, idx + 1, -1)
    frac = (u - cdf_lo) / jnp.maximum(cdf_hi - cdf_lo, 1e-30)
    frac = jnp.clip(frac, 0.0, _ONE_MINUS)  # never the far edge itself (may be inf)
    t = back(c_lo + (c_hi - c_lo) * frac)
    return jax.lax.stop_gradient(t)


def merge_samples(t_a, t_b) -> jnp.ndarray:
    """Sorted union [..., Sa + Sb] of two sample sets (NeRF §5.2: coarse ∪ fine)."""
    t_a, t_b = at_least_float32(t_a), at_least_float32(t_b)
    batch = jnp.broadcast_shapes(t_a.shape[:-1], t_b.shape[:-1])
    t_a = jnp.broadcast_to(t_a, batch + t_a.shape[-1:])
    t_b = jnp.broadcast_to(t_b, batch + t_b.shape[-1:])
    return jnp.sort(jnp.concatenate([t_a, t_b], -1), -1)


def edges_from_samples(t, near, far) -> jnp.ndarray:
    """Interval edges [..., S + 1] around sorted samples t [..., S] for volume rendering.

    Inner edges are midpoints of neighbouring samples; the outer edges are ``near`` and
    ``far`` (which may be inf), so the intervals tile [near, far] as the samples do.
    """
    t = at_least_float32(t)
    batch = t.shape[:-1]
    mids = 0.5 * (t[..., 1:] + t[..., :-1])
    lo = jnp.broadcast_to(at_least_float32(near), batch)[..., None]
    hi = jnp.broadcast_to(at_least_float32(far), batch)[..., None]
    return jnp.concatenate([lo, mids, hi], -1)
