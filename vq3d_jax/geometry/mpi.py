"""Multiplane-image (MPI) rendering, as in GMPI (Zhao et al., arXiv 2207.10642, §3).

An MPI is P fronto-parallel RGBA planes in the frame of a *reference camera* (GMPI: the
camera at the mean pose, yaw = pitch = 0, which sits at the origin of its MPI frame looking
down +z, the pose sphere's centre at (0, 0, r)): plane i lies at reference-frame z = d_i,
centred on the optical axis, with half extents (h_x, h_y). Planes are ordered front
(i = 0, nearest) to back (i = P - 1); GMPI's back plane has alpha 1 (the background).

Conventions (the library's, ``cameras`` module docstring; [choice] where GMPI differs):

* A plane's texture [Ht, Wt] covers x in [-h_x, h_x] (columns, +x right) and y in
  [-h_y, h_y] (rows, +y down), and its texels are pixel-like: texel (r, c) is centred at
  x = -h_x + (c + 0.5) 2 h_x / Wt, y = -h_y + (r + 0.5) 2 h_y / Ht, the plane's edge is
  the outer texels' edge, and a hit outside the plane has alpha 0 (a hard edge; between
  the edge and the outer texel centres the outer texel's value holds). [choice] GMPI's
  grid_sample uses align_corners=True (its outer texel *centres* lie on the plane edge,
  pitch 2h/(T - 1)) and zero padding (a one-texel fade outside); its texels sit where
  ours do when h_ours = h_gmpi T / (T - 1). Ours makes the reference camera, with planes
  sized to its frustum (``frustum_half_extents``, margin 1) at the image's resolution,
  sample every texel exactly at its centre: the homography is the identity there.
* Depths are target-camera z-depths; alpha compositing is front to back.

Plane extents. GMPI (``gmpi/utils/mpi_utils.py``,
``compute_plane_dhws_given_cam_pose_spatial_range[_confined]``, driven by
``MPIRenderer.compute_mpi_spatial_volume`` in ``gmpi/core/mpi_renderer.py``; its
``configs/gmpi.yml`` sets ``use_confined_volume: True``, ``spatial_enlarge_factor: 1.001``)
sizes the planes from a 100 x 100 grid of yaw/pitch over the pose range (mean ± n σ) plus
the mean pose: the back plane gets the symmetric bound of every such camera's frustum
corners on it, times the enlarge factor, so every training camera sees it everywhere; the
other planes get the mean-pose camera's frustum at the *back* plane's depth ("confined":
one constant cross-section, GMPI's default) or at their own depth (not confined). Both
are :func:`pose_range_half_extents`; :func:`frustum_half_extents` is the reference frustum.

Plane depths: GMPI's ``sample_distance(..., method="inverse")`` (the config's
``distance_sample_method``), uniform in disparity, front to back: :func:`plane_depths`.

Batching: every function takes one MPI and one target camera; batch with ``jax.vmap``,
e.g. views of one MPI ``jax.vmap(render_mpi, (None,) * 5 + (0, None, None))`` (height
and width are Python ints; under ``jax.jit`` mark them static). Memory is O(P h w).
Pure ``jax.numpy``, computed in float32 at least.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vq3d_jax.geometry.cameras import camera_directions, pixel_rays, world_to_camera
from vq3d_jax.geometry.precision import at_least_float32
from vq3d_jax.geometry.warp import bilinear_sample

# |ray z| below this (in the reference frame) counts as parallel to the planes: no hit.
_PARALLEL = 1e-8


def plane_depths(near, far, num_planes: int) -> jnp.ndarray:
    """[P] plane z-depths uniform in disparity, ``near`` first (front) to ``far`` last (back).

    1/d_i = 1/near + i/(P - 1) (1/far - 1/near) (GMPI §3; ``sample_distance`` "inverse").
    The ends are exact; a single plane sits at ``far`` (the background), as in GMPI.
    """
    near, far = at_least_float32(near), at_least_float32(far)
    dtype = jnp.promote_types(near.dtype, far.dtype)
    near, far = near.astype(dtype), far.astype(dtype)
    if num_planes == 1:
        return far[None]
    steps = jnp.arange(num_planes, dtype=dtype) / (num_planes - 1)
    depths = 1.0 / (1.0 / near + steps * (1.0 / far - 1.0 / near))
    return depths.at[0].set(near).at[-1].set(far)


def _corner_directions(intrinsics, height: int, width: int) -> jnp.ndarray:
    """[4, 3] camera-frame directions (z = 1) through the image corners (pixel edges)."""
    k = at_least_float32(intrinsics)
    uv = jnp.asarray([[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]], k.dtype)
    return camera_directions(k, uv)


def frustum_half_extents(depths, intrinsics, height: int, width: int,
                         margin=1.0) -> jnp.ndarray:
    """[P, 2] half extents (h_x, h_y) of the reference camera's frustum at each depth.

    h = margin · d · max over the image corners of |x/z|, |y/z| (K^-1 of the corner
    pixels (0, 0) … (W, H), edges not centres): for a centred K, h_x = margin d W/(2 f_x)
    and h_y = margin d H/(2 f_y). A principal point off centre takes the larger side
    (planes stay symmetric, as in GMPI). Margin 1 is exactly the frustum; this is GMPI's
    non-confined size of the front planes (not its default, see the module docstring).
    """
    depths = at_least_float32(depths)
    corners = _corner_directions(intrinsics, height, width).astype(depths.dtype)
    half = jnp.max(jnp.abs(corners[:, :2]), axis=0)  # [2] (x, y) per unit depth
    return at_least_float32(margin).astype(depths.dtype) * depths[:, None] * half


def pose_range_half_extents(depths, intrinsics, height: int, width: int, cam_to_worlds,
                            reference_cam_to_world=None, enlarge_factor=1.001,
                            confined: bool = True) -> jnp.ndarray:
    """[P, 2] GMPI's plane half extents: the back plane covers every camera given.

    ``cam_to_worlds`` [N, 4, 4] samples the pose range (GMPI: a 100 x 100 yaw/pitch grid
    over mean ± n σ, e.g. ``orbit(reference, pivot, yaws[:, None], pitches[None, :])``
    reshaped to [-1, 4, 4]); ``reference_cam_to_world`` (default identity) is the MPI's
    frame; all cameras share ``intrinsics`` and the image size (only the frustum's
    shape matters, not the resolution). Back plane: ``enlarge_factor`` x the symmetric
    bound max |x|, max |y| of the frustum-corner rays' hits on it, over the cameras and
    the reference camera; a corner ray that does not reach it (parallel, or the plane
    behind the camera) makes the bound inf. Other planes: the reference frustum at the
    back plane's depth (``confined``, GMPI's default ``use_confined_volume: True``) or at
    their own depth (``frustum_half_extents``, margin 1). [GMPI mpi_utils.py,
    ``compute_plane_dhws_given_cam_pose_spatial_range[_confined]``.]
    """
    depths = at_least_float32(depths)
    cams = at_least_float32(cam_to_worlds).astype(depths.dtype)
    ref = (jnp.eye(4, dtype=depths.dtype) if reference_cam_to_world is None
           else at_least_float32(reference_cam_to_world).astype(depths.dtype))
    back = depths[-1]
    corners = _corner_directions(intrinsics, height, width).astype(depths.dtype)  # [4, 3]
    # Corner rays of every camera in the reference frame: o_r = R_ref^T (c - c_ref),
    # d_r = R_ref^T R q.
    origins = world_to_camera(cams[:, :3, 3], ref)  # [N, 3]
    dirs_world = jnp.einsum("nij,kj->nki", cams[:, :3, :3], corners)  # [N, 4, 3]
    dirs = jnp.einsum("ji,nkj->nki", ref[:3, :3], dirs_world)  # R_ref^T d
    dz = dirs[..., 2]
    reaches = jnp.abs(dz) > _PARALLEL
    t = (back - origins[:, None, 2]) / jnp.where(reaches, dz, 1.0)
    hits = origins[:, None, :2] + t[..., None] * dirs[..., :2]  # [N, 4, 2]
    bound = jnp.where((reaches & (t > 0))[..., None], jnp.abs(hits), jnp.inf)
    bound = jnp.max(bound.reshape(-1, 2), axis=0)
    at_back = frustum_half_extents(back[None], intrinsics, height, width)[0]
    back_half = at_least_float32(enlarge_factor).astype(depths.dtype) * jnp.maximum(
        bound, at_back)
    if confined:
        front = jnp.broadcast_to(at_back, (depths.shape[0] - 1, 2))
    else:
        front = frustum_half_extents(depths[:-1], intrinsics, height, width)
    return jnp.concatenate([front, back_half[None]], axis=0)


def warp_mpi(rgba, depths, half_extents, reference_cam_to_world, intrinsics, cam_to_world,
             height: int, width: int):
    """Every plane seen from the target camera: per-plane samples, not yet composited.

    Args:
      rgba: [P, Ht, Wt, 4] plane colours and alphas in [0, 1] (any texture size).
        GMPI's one shared RGB [Ht, Wt, 3] and per-plane alphas [P, Ht, Wt] enter as
        ``concatenate([broadcast_to(rgb, (P, Ht, Wt, 3)), alphas[..., None]], -1)``.
      depths: [P] reference-frame z of each plane, front to back.
      half_extents: [P, 2] (h_x, h_y), or [P] for square planes (h_x = h_y).
      reference_cam_to_world: [4, 4] the MPI's frame (planes at z = d_i in it).
      intrinsics, cam_to_world: [3, 3], [4, 4] the target camera; height, width its
        image size (static).

    Each target pixel ray o + t q (q = K^-1 [u, v, 1] rotated to the reference frame,
    camera z = 1 so t is the target z-depth) meets plane i at t_i = (d_i - o_z) / q_z:
    per pixel, the plane-induced homography x_ref ~ K_ref (R - t_rel n^T / d_i) K^-1 x
    (Hartley & Zisserman §13.1; GMPI ``homography`` in gmpi/core/mpi.py). The plane's
    texture is sampled bilinearly there. A hit behind the target camera (t <= 0), a ray
    parallel to the planes or a hit outside [-h, h] gives alpha 0 (and colour 0, z 0).

    Returns a dict: ``rgb`` [P, h, w, 3], ``alpha`` [P, h, w], ``z`` [P, h, w] target
    z-depth of the hit, ``uv`` [P, h, w, 2] texel coordinates of the hit (pixel-centre
    convention: texel (r, c) centre at (c + 0.5, r + 0.5); (0.5, 0.5) where not valid),
    ``valid`` [P, h, w] bool.
    """
    rgba = at_least_float32(rgba)
    c2w = at_least_float32(cam_to_world)
    dtype = jnp.promote_types(rgba.dtype, c2w.dtype)
    rgba, c2w = rgba.astype(dtype), c2w.astype(dtype)
    depths = at_least_float32(depths).astype(dtype)
    ref = at_least_float32(reference_cam_to_world).astype(dtype)
    half = at_least_float32(half_extents).astype(dtype)
    if half.ndim == 1:
        half = jnp.stack([half, half], -1)
    tex_h, tex_w = rgba.shape[1:3]

    # Every ray starts at the target centre c; directions [h, w, 3] have camera z = 1.
    _, directions = pixel_rays(intrinsics, c2w, height, width)
    o_ref = world_to_camera(c2w[:3, 3], ref)  # [3] c in the reference frame
    d_ref = jnp.sum(ref[:3, :3] * directions[..., :, None], -2)  # R_ref^T d, [h, w, 3]
    dz = d_ref[..., 2]
    crosses = jnp.abs(dz) > _PARALLEL
    # Ray-plane intersection, t = target z-depth of the hit (GMPI §3's homography warp).
    t = (depths[:, None, None] - o_ref[2]) / jnp.where(crosses, dz, 1.0)  # [P, h, w]
    xy = o_ref[:2] + t[..., None] * d_ref[..., :2]  # [P, h, w, 2] in the reference frame
    # Plane coordinates [-h, h] → texel coordinates [0, T] (pixel-centre convention).
    size = jnp.asarray([tex_w, tex_h], dtype)
    uv = (xy / half[:, None, None, :] + 1.0) * 0.5 * size
    inside = jnp.all((uv >= 0.0) & (uv <= size), axis=-1)
    valid = crosses & (t > 0) & inside
    # Keep garbage (inf/NaN of missed rays) out of the gather and its gradient.
    uv = jnp.where(valid[..., None], uv, 0.5)
    sampled = jax.vmap(bilinear_sample)(rgba, uv)  # [P, h, w, 4]
    mask = valid[..., None]
    return {
        "rgb": jnp.where(mask, sampled[..., :3], 0.0),
        "alpha": jnp.where(valid, sampled[..., 3], 0.0),
        "z": jnp.where(valid, t, 0.0),
        "uv": uv,
        "valid": valid,
    }


def composite_mpi(rgb, alpha, z):
    """Front-to-back over-compositing of warped planes (GMPI §3).

    w_i = α_i Π_{j<i} (1 - α_j), C = Σ w_i c_i, depth = Σ w_i z_i, opacity = Σ w_i
    (= 1 - Π (1 - α_j)); plane 0 is the front. Nothing shows behind the last plane
    (composited over zero; GMPI's back plane has α = 1). No epsilon is added to 1 - α
    (GMPI's forward adds 1e-10 inside its cumprod; jnp.cumprod differentiates through
    zeros). The plane order is the depth order along every ray as long as the target
    camera is in front of the first plane (its reference-frame z < d_0).

    Args: ``rgb`` [P, ..., C], ``alpha`` [P, ...], ``z`` [P, ...].
    Returns ``color`` [..., C], ``depth`` [...], ``opacity`` [...], ``weights`` [P, ...],
    ``transmittance`` [P, ...] (Π_{j<i} (1 - α_j)).
    """
    rgb, alpha, z = (at_least_float32(x) for x in (rgb, alpha, z))
    survive = jnp.cumprod(1.0 - alpha, axis=0)
    transmittance = jnp.concatenate([jnp.ones_like(alpha[:1]), survive[:-1]], axis=0)
    weights = alpha * transmittance
    return {
        "color": jnp.sum(weights[..., None] * rgb, axis=0),
        "depth": jnp.sum(weights * z, axis=0),
        "opacity": jnp.sum(weights, axis=0),
        "weights": weights,
        "transmittance": transmittance,
    }


def render_mpi(rgba, depths, half_extents, reference_cam_to_world, intrinsics, cam_to_world,
               height: int, width: int):
    """Renders an MPI from a target camera: :func:`warp_mpi` then :func:`composite_mpi`.

    Arguments as :func:`warp_mpi` (``rgba`` [P, Ht, Wt, 4]; any P, e.g. 32 planes in
    training and 96 at inference). Returns a dict: ``color`` [h, w, 3], ``depth`` [h, w]
    (expected target z-depth Σ w_i z_i, not normalised by opacity, as in compositing.py
    and GMPI), ``opacity`` [h, w], ``weights`` [P, h, w] (per-plane compositing weights,
    for GMNR's α-guided sampling) and ``alpha`` [P, h, w] (the warped alphas).
    """
    planes = warp_mpi(rgba, depths, half_extents, reference_cam_to_world, intrinsics,
                      cam_to_world, height, width)
    out = composite_mpi(planes["rgb"], planes["alpha"], planes["z"])
    return {
        "color": out["color"],
        "depth": out["depth"],
        "opacity": out["opacity"],
        "weights": out["weights"],
        "alpha": planes["alpha"],
    }


def alpha_guided_pixels(rng: jax.Array, weights: jax.Array, fraction: float):
    """GMNR's α-guided sampling (arXiv 2304.01172, α-VdR): per plane, ⌈fraction·n⌉ of
    its n pixels with non-zero compositing weight, drawn uniformly without replacement
    (Gumbel top-k on a mask; [choice] GMNR's code draws with replacement).

    Static shapes: a budget of k = ⌈fraction·h·w⌉ slots per plane, of which the first
    ⌈fraction·n⌉ are used. Returns (flat pixel indices [P, k], valid [P, k]).
    """
    p, h, w = weights.shape
    k = max(1, math.ceil(fraction * h * w))
    nonzero = weights.reshape(p, h * w) > 0
    noise = jax.random.gumbel(rng, (p, h * w))
    _, index = jax.lax.top_k(jnp.where(nonzero, noise, -jnp.inf), k)
    wanted = jnp.ceil(fraction * jnp.sum(nonzero, axis=1, dtype=jnp.float32))
    return index, jnp.arange(k)[None, :] < wanted[:, None]
