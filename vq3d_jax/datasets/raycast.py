"""A vectorised numpy ray caster, and the synthetic dataset's examples rendered with it.

:func:`render` shades :class:`.scenes.Scene` primitives (:mod:`.intersect`) from V cameras
at once; :func:`generate_example` draws one scene (:mod:`.scenes`) and renders its
canonical and held-out views. Pure numpy; conventions (OpenCV cameras, world up = -y,
z-depth with +inf for the sky): see :mod:`.cameras_np`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vq3d_jax.datasets.cameras_np import intrinsics_from_fov, orbit, pixel_rays
from vq3d_jax.datasets.intersect import intersect, surface_normals, valid_hits
from vq3d_jax.datasets.scenes import (
    FOV_DEG,
    NOVEL_VIEW_OFFSETS_DEG,
    Scene,
    canonical_camera,
    sample_scene,
    scene_rng,
)

# Ids in the per-pixel primitive map returned by `render` (primitives are 0..P-1).
SKY_ID = -1
GROUND_ID = -2


def _candidate_rays(
    scene: Scene, intrinsics: np.ndarray, c2w: np.ndarray, h: int, w: int
) -> list[np.ndarray]:
    """Per primitive, the flat ray indices (over V*H*W) whose pixels may see it.

    A primitive's bounding sphere has a camera-frame bounding cube whose projection lies
    inside the hull of its eight projected corners; the pixels of that rectangle (plus a
    pixel of margin) are kept. Views where the cube reaches behind the camera keep all.
    """
    radii = np.linalg.norm(scene.half_extents, axis=-1)[:, None]  # (P, 1)
    # Camera-frame centres (P, V, 3): R^T (C - o).
    c = np.einsum("vji,pvj->pvi", c2w[:, :3, :3], scene.centers[:, None] - c2w[:, :3, 3])
    z_near, z_far = c[..., 2] - radii, c[..., 2] + radii
    behind = z_near <= 1e-3
    bounds = []
    for axis, size in ((0, w), (1, h)):  # u from x, v from y
        f, pp = intrinsics[:, axis, axis], intrinsics[:, axis, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            corners = [
                f * (c[..., axis] + sx * radii) / z + pp
                for sx in (-1.0, 1.0)
                for z in (z_near, z_far)
            ]
        lo = np.where(behind, 0, np.floor(np.min(corners, axis=0) - 1.5))
        hi = np.where(behind, size, np.ceil(np.max(corners, axis=0) + 0.5))
        bounds.append((lo[..., None], hi[..., None]))  # (P, V, 1)
    cols, rows = np.arange(w), np.arange(h)
    in_u = (cols >= bounds[0][0]) & (cols <= bounds[0][1])  # (P, V, W)
    in_v = (rows >= bounds[1][0]) & (rows <= bounds[1][1])  # (P, V, H)
    return [np.flatnonzero(in_v[i][:, :, None] & in_u[i][:, None, :]) for i in range(len(c))]


def _light_frame(light: np.ndarray) -> np.ndarray:
    """Rows: two unit vectors orthogonal to ``light``, then ``light`` itself."""
    lx, ly, lz = (float(x) for x in light)
    # light × x̂ (or × ẑ when light is near x̂), then light × e1; np.cross is slow on 3-vectors.
    e1 = np.array([0.0, lz, -ly]) if abs(lx) < 0.9 else np.array([ly, -lx, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.array([ly * e1[2] - lz * e1[1], lz * e1[0] - lx * e1[2], lx * e1[1] - ly * e1[0]])
    return np.stack([e1, e2, np.array([lx, ly, lz])])


def _near_shadow_cylinder(q, centre, radius: float) -> np.ndarray:
    """Points (light frame: q[2] along the light) whose shadow ray may meet a sphere.

    A square prism around the sphere's shadow cylinder, cut at the sphere's far side.
    """
    return (
        (np.abs(q[0] - centre[0]) <= radius)
        & (np.abs(q[1] - centre[1]) <= radius)
        & (q[2] < centre[2] + radius)
    )


@dataclasses.dataclass(frozen=True)
class Rendering:
    rgb: np.ndarray  # (V, H, W, 3) uint8
    depth: np.ndarray  # (V, H, W) float32 camera z-depth, +inf for sky
    ids: np.ndarray  # (V, H, W) int32 primitive index, GROUND_ID or SKY_ID


def render(
    scene: Scene, intrinsics: np.ndarray, cam_to_world: np.ndarray, height: int, width: int
) -> Rendering:
    """Ray-casts V views at once (cam_to_world (V, 4, 4), intrinsics (3, 3) or (V, 3, 3)).

    Each primitive is intersected analytically with every ray of every view that its
    bounding sphere may cover; nearest hit wins. Lambertian shading from a directional
    light plus ambient, with hard shadows (one shadow ray per lit point).

    Arrays are kept as separate contiguous 1-D components: numpy gathers/scatters on
    1-D arrays are several times faster than on the axis of a (3, M) array.
    """
    f32 = np.float32
    c2w = np.asarray(cam_to_world, np.float64).reshape(-1, 4, 4)
    k = np.broadcast_to(np.asarray(intrinsics, np.float64), (len(c2w), 3, 3))
    origins, dirs = pixel_rays(k, c2w, height, width)
    num_views, num_pix = dirs.shape[1:]
    d = tuple(dirs.reshape(3, -1))
    o = tuple(np.repeat(origins[:, j], num_pix) for j in range(3))
    num_prims = len(scene.kinds)

    # Nearest hit: start from the ground plane y = 0, then a running minimum over
    # primitives, each intersected only with its candidate rays.
    if scene.ground:
        with np.errstate(divide="ignore"):
            depth = valid_hits(-o[1] / d[1], True).astype(f32)
    else:
        depth = np.full(d[0].shape, np.inf, f32)
    ids = np.where(np.isfinite(depth), GROUND_ID, SKY_ID).astype(np.int32)
    candidates = _candidate_rays(scene, k, c2w, height, width) if num_prims else []
    for i, idx in enumerate(candidates):
        if idx.size:
            t = intersect(scene, i, tuple(x[idx] for x in o), tuple(x[idx] for x in d))
            closer = np.flatnonzero(t < depth[idx])
            depth[idx[closer]] = t[closer]
            ids[idx[closer]] = i

    # Surface points, normals and albedo, first as if everything were ground, then each
    # primitive's pixels overwritten by index.
    hit = ids != SKY_ID
    t0 = np.where(hit, depth, f32(0.0))
    p = [o[j] + t0 * d[j] for j in range(3)]
    normals = [np.zeros_like(t0), np.full_like(t0, -1.0), np.zeros_like(t0)]  # world up
    cell = 1.0 / scene.checker_size
    parity = (np.floor(p[0] * cell) + np.floor(p[2] * cell)).astype(np.int32) & 1
    sign = (2 * parity - 1).astype(f32)
    # Fade the checker with distance: far squares are sub-pixel and would only alias.
    contrast = sign * scene.checker_contrast / (1.0 + t0 * f32(1.0 / 15.0))
    albedo = [f32(g) * (1.0 + contrast) for g in scene.ground_color]
    for i in range(num_prims):
        sel = np.flatnonzero(ids[candidates[i]] == i) if candidates[i].size else None
        if sel is None or not sel.size:
            continue
        sel = candidates[i][sel]
        n = surface_normals(scene, i, np.stack([x[sel] for x in p]))
        for j in range(3):
            normals[j][sel] = n[j]
            albedo[j][sel] = scene.colors[i, j]
    light = scene.light_dir.astype(f32)
    lit = np.maximum(light[0] * normals[0] + light[1] * normals[1] + light[2] * normals[2], 0.0)

    if scene.shadows and num_prims:
        # A shadow ray can only meet a primitive if the point lies in the bounding
        # sphere's shadow cylinder: test that in a light-aligned frame first, cheaply.
        frame = _light_frame(scene.light_dir).astype(f32)
        q = [frame[r, 0] * p[0] + frame[r, 1] * p[1] + frame[r, 2] * p[2] for r in range(3)]
        qc = scene.centers @ frame.T.astype(np.float64)
        radii = (np.linalg.norm(scene.half_extents, axis=-1) + 2e-3).tolist()
        qc = qc.tolist()  # Python floats keep the comparisons in float32
        shadowed = np.zeros(lit.shape, bool)
        lit_pos = (lit > 0) & hit
        for i in range(num_prims):
            near = _near_shadow_cylinder(q, qc[i], radii[i])
            cand = np.flatnonzero(near & lit_pos & ~shadowed)
            if cand.size:
                # Step off the surface before casting towards the light.
                so = tuple(p[j][cand] + f32(1e-3) * normals[j][cand] for j in range(3))
                t_sh = intersect(scene, i, so, tuple(light))  # float32 scalars
                shadowed[cand[np.isfinite(t_sh)]] = True
        lit[shadowed] = 0.0
    shade = scene.ambient + (1.0 - scene.ambient) * lit
    rgb = np.empty((lit.size, 3), f32)  # pixel-major, as the output image
    for j in range(3):
        np.multiply(albedo[j], shade, out=rgb[:, j])

    # Sky: gradient from the horizon colour to the zenith colour with ray elevation.
    rows = np.flatnonzero(~hit)
    if rows.size:
        ds = [x[rows] for x in d]
        elevation = np.clip(-ds[1] / np.sqrt(ds[0] ** 2 + ds[1] ** 2 + ds[2] ** 2), 0.0, 1.0)
        blend = np.sqrt(elevation)
        for j in range(3):
            hor, zen = scene.sky_horizon[j], scene.sky_zenith[j]
            rgb[rows, j] = f32(hor) + f32(zen - hor) * blend
    rgb *= 255.0
    rgb += 0.5
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return Rendering(
        rgb=rgb.astype(np.uint8).reshape(num_views, height, width, 3),
        depth=depth.reshape(num_views, height, width),
        ids=ids.reshape(num_views, height, width),
    )


# --------------------------------------------------------------------------- examples


def generate_example(split: str, index: int, resolution: int, seed: int = 0) -> dict:
    """One scene rendered from its canonical camera and the NOVEL_VIEW_OFFSETS_DEG views.

    Returns numpy arrays: ``image`` (S, S, 3) uint8, ``depth`` (S, S) float32 z-depth,
    ``intrinsics`` (3, 3), ``cam_to_world`` (4, 4), ``scene_center`` (3,), ``label`` (the
    class of the primitive covering most canonical pixels), and ``novel_views`` with the
    same keys stacked over K views plus ``yaw_pitch`` (K, 2) radians. Scenes whose
    dominant primitive covers under 2 % of the canonical view are redrawn (same stream).
    """
    rng = scene_rng(split, index, seed)
    k = intrinsics_from_fov(FOV_DEG, resolution, resolution)
    offsets = np.deg2rad(np.array(NOVEL_VIEW_OFFSETS_DEG))
    while True:
        scene = sample_scene(rng)
        c2w = canonical_camera(scene, rng)
        cams = np.stack([c2w] + [orbit(c2w, scene.center, y, p) for y, p in offsets])
        out = render(scene, k, cams, resolution, resolution)
        counts = np.bincount(np.maximum(out.ids[0].ravel(), -1) + 1, minlength=1 + len(scene.kinds))
        dominant = int(np.argmax(counts[1:]))
        if counts[1 + dominant] >= 0.02 * resolution * resolution:
            break
    f32 = np.float32
    return {
        "image": out.rgb[0],
        "depth": out.depth[0],
        "intrinsics": k.astype(f32),
        "cam_to_world": c2w.astype(f32),
        "scene_center": scene.center.astype(f32),
        "label": int(scene.kinds[dominant]),
        "novel_views": {
            "image": out.rgb[1:],
            "depth": out.depth[1:],
            "intrinsics": np.broadcast_to(k, (len(offsets), 3, 3)).astype(f32),
            "cam_to_world": cams[1:].astype(f32),
            "yaw_pitch": offsets.astype(f32),
        },
    }
