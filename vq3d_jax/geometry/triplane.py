"""Tri-plane feature lookup (EG3D, arXiv 2112.07945, §4 "tri-plane hybrid representation").

Layout: ``planes`` [*batch, 3, R, R, C], channels last (lane-dense gathers on TPU/GPU).
The three planes are xy, yz and zx (each axis pair once; not EG3D code's duplicated xz).
Plane p with axis pair (a, b) is indexed ``plane[row, col]`` with the column from the
first axis and the row from the second, as image grid-sampling does (u → width,
v → height):

    plane 0 (xy): col ← x, row ← y
    plane 1 (yz): col ← y, row ← z
    plane 2 (zx): col ← z, row ← x

Coordinates are in [-1, 1]; texel i's centre sits at -1 + (2i + 1)/R (align_corners =
False). Outside the centres' range a lookup either clamps to the border texels
(``outside='border'``: VQ3D's contracted field has nothing beyond the planes) or blends
towards zero texels beyond the edge, zero outside [-1, 1] (``outside='zeros'``: EG3D's
grid_sample padding, a bounded box with empty space around it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vq3d_jax.geometry.precision import at_least_float32

# (column axis, row axis) of each plane.
PLANE_AXES = ((0, 1), (1, 2), (2, 0))
PLANE_NAMES = ("xy", "yz", "zx")


def _bilinear_corners(coord, res, outside: str = "border"):
    """Continuous texel index f = ((x + 1) R - 1) / 2 (centres at integers) → (i0, the
    weight of i0 + 1, whether i0 and i0 + 1 are texels). 'border': f clamps to [0, R - 1]
    and i0 <= R - 2 keeps i0 + 1 in range, with weight 1 on it at the last texel (both
    corners real). 'zeros': i0 = floor(f) may lie outside [0, R); such corners are zero
    texels (gathered clamped, masked out)."""
    f = ((coord + 1.0) * res - 1.0) * 0.5
    if outside == "border":
        f = jnp.clip(f, 0.0, res - 1.0)
        i0 = jnp.clip(jnp.floor(f), 0, res - 2).astype(jnp.int32)
        return i0, f - i0, True, True
    if outside != "zeros":
        raise ValueError(f"outside must be 'border' or 'zeros', got {outside!r}")
    floor = jnp.floor(f)
    i0 = floor.astype(jnp.int32)
    return i0, f - floor, (i0 >= 0) & (i0 < res), (i0 >= -1) & (i0 < res - 1)


def _plane_coords(points):
    """Points [N, 3] → each plane's column and row coordinates, [N, 3] each."""
    pts = at_least_float32(points)
    cols = jnp.stack([pts[:, a] for a, _ in PLANE_AXES], -1)
    rows = jnp.stack([pts[:, b] for _, b in PLANE_AXES], -1)
    return cols, rows


def _plane_lookup(plane: jnp.ndarray, cols: jnp.ndarray, rows: jnp.ndarray,
                  outside: str = "border") -> jnp.ndarray:
    """One plane [R, R, C], coordinates [N] → bilinear features [N, C] (float32 at least)."""
    res_v, res_u, channels = plane.shape
    flat = plane.reshape(res_v * res_u, channels)
    c0, wc, c0_in, c1_in = _bilinear_corners(cols, res_u, outside)
    r0, wr, r0_in, r1_in = _bilinear_corners(rows, res_v, outside)

    def texel(r, c, inside):
        index = jnp.clip(r, 0, res_v - 1) * res_u + jnp.clip(c, 0, res_u - 1)
        value = jnp.take(flat, index, axis=0).astype(wc.dtype)
        return value if inside is True else value * inside[:, None].astype(wc.dtype)

    f00 = texel(r0, c0, r0_in & c0_in)
    f01 = texel(r0, c0 + 1, r0_in & c1_in)
    f10 = texel(r0 + 1, c0, r1_in & c0_in)
    f11 = texel(r0 + 1, c0 + 1, r1_in & c1_in)
    wc, wr = wc[:, None], wr[:, None]
    top = f00 + (f01 - f00) * wc
    bottom = f10 + (f11 - f10) * wc
    return top + (bottom - top) * wr


def _lookup(planes: jnp.ndarray, points: jnp.ndarray, summed: bool,
            outside: str = "border") -> jnp.ndarray:
    """One tri-plane [3, R, R, C], points [N, 3] → features [N, 3, C], or [N, C] summed.

    Each plane is gathered on its own and summed with plain adds: XLA on the CPU fuses
    one gather over the stacked planes into a reduction over the plane axis ~10× slower.
    """
    cols, rows = _plane_coords(points)
    xy, yz, zx = (_plane_lookup(planes[k], cols[:, k], rows[:, k], outside)
                  for k in range(3))
    return xy + yz + zx if summed else jnp.stack([xy, yz, zx], axis=1)


def splat_to_triplane(points, features, resolution: int):
    """Bilinear splatting, the adjoint of the lookup: scatters point features into planes.

    ``points`` [N, 3] in [-1, 1]^3, ``features`` [N, 3, C] (one feature per plane) →
    (``sums`` [3, R, R, C], ``weights`` [3, R, R]): each point adds its feature times its
    bilinear weight to the four texels it would be looked up from, on each plane, and
    the weights alone to ``weights`` (so sums / weights is the weighted mean of what
    landed on a texel). For any planes P, Σ_n ⟨lookup(P, x_n), f_n⟩ = ⟨P, sums⟩.
    """
    points, features = jnp.asarray(points), jnp.asarray(features)
    res, channels = resolution, features.shape[-1]
    cols, rows = _plane_coords(points)
    c0, wc, _, _ = _bilinear_corners(cols, res)
    r0, wr, _, _ = _bilinear_corners(rows, res)
    base = jnp.arange(3, dtype=jnp.int32) * (res * res) + r0 * res + c0  # [N, 3]
    feats = features.astype(wc.dtype)
    sums = jnp.zeros((3 * res * res, channels), wc.dtype)
    totals = jnp.zeros((3 * res * res,), wc.dtype)
    for offset, weight in ((0, (1 - wr) * (1 - wc)), (1, (1 - wr) * wc),
                           (res, wr * (1 - wc)), (res + 1, wr * wc)):
        sums = sums.at[base + offset].add(weight[..., None] * feats)
        totals = totals.at[base + offset].add(weight)
    shape = (3, resolution, resolution)
    return sums.reshape(shape + (channels,)), totals.reshape(shape)


def pull_push_fill(values, coverage):
    """Fills the uncovered texels of planes from coarser averages (pull-push, Gortler et al.,
    "The Lumigraph", SIGGRAPH 1996 §3.2).

    ``values`` [P, R, R, C] (e.g. the weighted means a splat left), ``coverage`` [P, R, R]
    in [0, 1] (how much of a texel was observed). Pull: each 2× coarser level holds the
    coverage-weighted mean of its 2×2 children and coverage min(Σ children, 1). Push: from
    the coarsest level down, texel = c·value + (1 − c)·(its parent's filled value), so a
    covered texel keeps its value and a hole takes the average of the nearest observed
    texels at the scale where they exist. The coarsest level (1×1, or where R is odd)
    falls back to the whole plane's coverage-weighted mean; a plane with no coverage at
    all fills with 0.
    """
    values = jnp.asarray(values)
    coverage = jnp.asarray(coverage, values.dtype)[..., None]
    res = values.shape[1]
    if res == 1 or res % 2:
        total = jnp.sum(coverage, axis=(1, 2), keepdims=True)
        parent = jnp.sum(coverage * values, axis=(1, 2), keepdims=True) / jnp.maximum(total, 1e-12)
    else:
        def pool(x):
            return x.reshape(x.shape[0], res // 2, 2, res // 2, 2, x.shape[-1]).sum((2, 4))

        weight = pool(coverage)
        coarse = pool(coverage * values) / jnp.maximum(weight, 1e-12)
        parent = pull_push_fill(coarse, jnp.minimum(weight, 1.0)[..., 0])
        parent = jnp.repeat(jnp.repeat(parent, 2, axis=1), 2, axis=2)
    return coverage * values + (1.0 - coverage) * parent


def triplane_features(planes, points, reduce: str | None = None,
                      outside: str = "border") -> jnp.ndarray:
    """Bilinearly samples the xy, yz and zx planes at points (EG3D §4).

    Args:
      planes: [*batch, 3, R, R, C] (R >= 2), see the module docstring for the axes.
      points: [*batch, ..., 3] in [-1, 1]^3 (e.g. ``contract_to_unit`` of world points);
        the leading ``*batch`` dims match the planes' (one tri-plane per batch element).
      reduce: None → [*batch, ..., 3, C] per-plane features; 'sum' / 'mean' → [..., C]
        (EG3D aggregates by mean); 'concat' → [..., 3C] in plane order xy, yz, zx.
      outside: beyond the texel centres, 'border' clamps and 'zeros' fades to zero
        texels (the module docstring).

    Interpolation runs in float32 at least; the result has the planes' dtype.
    """
    planes = jnp.asarray(planes)
    points = jnp.asarray(points)
    if planes.ndim < 4 or planes.shape[-4] != 3:
        raise ValueError(f"planes must be [*batch, 3, R, R, C], got {planes.shape}")
    nb = planes.ndim - 4
    batch = planes.shape[:nb]
    if points.shape[:nb] != batch or points.shape[-1] != 3:
        raise ValueError(f"points {points.shape} must be [*{batch}, ..., 3]")
    point_shape = points.shape[nb:-1]
    channels = planes.shape[-1]
    flat_planes = planes.reshape((-1,) + planes.shape[nb:])
    flat_points = points.reshape(flat_planes.shape[0], -1, 3)
    if reduce in ("sum", "mean"):
        feats = jax.vmap(lambda p, x: _lookup(p, x, True, outside))(flat_planes, flat_points)
        out = feats.reshape(batch + point_shape + (channels,))
        return (out / 3.0 if reduce == "mean" else out).astype(planes.dtype)
    feats = jax.vmap(lambda p, x: _lookup(p, x, False, outside))(flat_planes, flat_points)
    feats = feats.reshape(batch + point_shape + (3, channels))
    if reduce is None:
        out = feats
    elif reduce == "concat":
        out = feats.reshape(feats.shape[:-2] + (3 * channels,))
    else:
        raise ValueError(f"reduce must be None, 'sum', 'mean' or 'concat', got {reduce!r}")
    return out.astype(planes.dtype)
