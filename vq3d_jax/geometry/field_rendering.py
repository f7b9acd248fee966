"""Rendering a radiance field along rays: coarse samples, importance resampling, chunks.

`field_fn(points [N, S, 3]) -> (density [N, S], features [N, S, C])` is any
field (a tri-plane NeRF, an analytic test scene). Samples are stratified in
disparity between `near` and `far` (far may be ∞, VQ3D's unbounded scenes),
then `num_importance` more are drawn from the coarse weights (NeRF §5.2,
hierarchical sampling with one shared field, as EG3D does) and the union is
rendered. Rays are processed in chunks of `chunk_size` under `lax.map` so
memory stays bounded at any image size.

`far_backdrop` (far = ∞ only): one more sample, at infinity and opaque, ends every
ray; the last stratified bin, disparities (0, s), is cut at half its sample's
disparity, so the finite samples still reach as far as before and the backdrop
takes what lies beyond. Every ray then ends on the far field, seen in the ray's own
direction (a contracted field maps infinity along d to the direction d itself).
Without it the far field is only looked up at a finite depth (about 60 z-units at
12 bins), whose contracted position depends on where the camera stands: a camera
moved sideways sees a near-field copy of the sky, tilted, and a ray whose field is
empty there ends on nothing (black).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vq3d_jax.geometry.cameras import normalize_directions
from vq3d_jax.geometry.compositing import volume_render
from vq3d_jax.geometry.ray_sampling import (
    blur_pool_weights,
    edges_from_samples,
    merge_samples,
    sample_pdf,
    stratified_samples,
)

Field = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


# Stands in for t = ∞: finite, so points and gradients stay finite; contract(o + T·d) is
# the direction d to float32 precision for any origin in the scene.
FAR_BACKDROP_T = 1e12


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """How rays are sampled and composited; static (hashable): part of the compiled program.

    `near`/`far`: the z-depth range (far may be ∞); `num_samples` stratified in disparity,
    then `num_importance` more from their weights; `randomized` jitters both (training);
    `chunk_size` rays per `lax.map` chunk (None = all at once); `far_backdrop` (far = ∞
    only): the opaque sample at infinity described above. `spacing`: stratify (and draw
    importance samples) uniformly in 'disparity' (unbounded scenes) or 'depth' (a
    bounded range, EG3D); `weight_padding`: resample from mip-NeRF's blur-pooled coarse
    weights plus this padding (`ray_sampling.blur_pool_weights`; EG3D: 0.01) instead
    of the raw weights (None).
    """

    near: float
    far: float
    num_samples: int
    num_importance: int = 0
    randomized: bool = True
    chunk_size: int | None = None
    far_backdrop: bool = False
    spacing: str = "disparity"
    weight_padding: float | None = None


def _append(values, end):
    """values [..., K] → [..., K + 1] with `end` last."""
    return jnp.concatenate([values, jnp.full(values.shape[:-1] + (1,), end, values.dtype)], -1)


def _render_chunk(field_fn: Field, origins, directions, rng, opts: RenderOptions, background):
    near, far, randomized = opts.near, opts.far, opts.randomized
    num_importance = opts.num_importance
    coarse_rng, fine_rng = jax.random.split(rng)
    n = origins.shape[0]
    # Directions have camera-frame z = 1 (t is z-depth); σ is per metric distance.
    _, ray_length = normalize_directions(directions)

    backdrop = opts.far_backdrop and far == float("inf")

    def evaluate(t, edges):
        points = origins[:, None, :] + t[..., None] * directions[:, None, :]
        density, features = field_fn(points)
        if backdrop:  # the sample at infinity (the largest t) is opaque
            density = density.at[..., -1].set(jnp.maximum(density[..., -1], 1.0))
        out = volume_render(density, features, edges, background=background,
                            t_samples=t, delta_scale=ray_length)
        return out, t

    t, edges = stratified_samples(coarse_rng, near, far, opts.num_samples, (n,), randomized,
                                  opts.spacing)

    def resample(weights, bin_edges):
        if opts.weight_padding is not None:
            weights = blur_pool_weights(weights, opts.weight_padding)
        return sample_pdf(fine_rng, bin_edges, weights, num_importance, randomized,
                          opts.spacing)

    if backdrop:
        # The last bin, disparities (0, s), is split at half its sample's disparity: the
        # finite samples tile [near, 2·t_last], the backdrop covers the rest to infinity.
        finite_far = 2.0 * t[..., -1]
        edges = edges.at[..., -1].set(finite_far)
        out, _ = evaluate(_append(t, FAR_BACKDROP_T), _append(edges, jnp.inf))
        if num_importance:
            t_fine = resample(out["weights"][..., :-1], edges)
            t = merge_samples(t, t_fine)
            edges = edges_from_samples(t, near, finite_far)
            out, _ = evaluate(_append(t, FAR_BACKDROP_T), _append(edges, jnp.inf))
        t = _append(t, FAR_BACKDROP_T)
    else:
        out, t = evaluate(t, edges)
        if num_importance:
            t_fine = resample(out["weights"], edges)
            t = merge_samples(t, t_fine)
            out, t = evaluate(t, edges_from_samples(t, near, far))
    out["t"] = t
    # Per-sample disparity (0 at infinity) for VQ3D's weighted pointwise depth loss.
    out["sample_disparity"] = 1.0 / t
    return out


def render_rays(
    field_fn: Field,
    origins: jax.Array,
    directions: jax.Array,
    rng: jax.Array,
    options: RenderOptions,
    background: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Renders rays [..., 3] (directions with camera z = 1) through `field_fn`.

    Returns `volume_render`'s outputs with the ray shape [...] leading, plus `t`
    (all sample depths) and `sample_disparity` [..., S_total]. With
    `options.chunk_size`, rays go through `lax.map` in chunks (padded to a multiple).
    `background` [C] is seen through what transmittance is left (None: black).
    """
    ray_shape = origins.shape[:-1]
    o = origins.reshape(-1, 3).astype(jnp.float32)
    d = directions.reshape(-1, 3).astype(jnp.float32)
    chunk_size = options.chunk_size
    n = o.shape[0]
    if not chunk_size or chunk_size >= n:
        out = _render_chunk(field_fn, o, d, rng, options, background)
    else:
        num_chunks = -(-n // chunk_size)
        pad = num_chunks * chunk_size - n
        # Padding rays repeat the last ray; their outputs are dropped below.
        o_chunks = jnp.concatenate([o, jnp.repeat(o[-1:], pad, 0)]).reshape(num_chunks, -1, 3)
        d_chunks = jnp.concatenate([d, jnp.repeat(d[-1:], pad, 0)]).reshape(num_chunks, -1, 3)
        keys = jax.random.split(rng, num_chunks)
        out = jax.lax.map(
            lambda args: _render_chunk(field_fn, *args, options, background),
            (o_chunks, d_chunks, keys)
        )
        out = jax.tree.map(lambda x: x.reshape((num_chunks * chunk_size,) + x.shape[2:])[:n], out)
    return jax.tree.map(lambda x: x.reshape(ray_shape + x.shape[1:]), out)
