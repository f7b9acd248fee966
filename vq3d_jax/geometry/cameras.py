"""Pinhole cameras in the library's one convention, used by every renderer and dataset:

* camera frame OpenCV: +x right, +y down, +z forward (into the scene);
* ``cam_to_world`` [..., 4, 4]: rotation columns are the camera axes in world coordinates,
  the last column is the camera centre;
* intrinsics ``K`` [..., 3, 3] in pixels, principal point at the image centre, pixel
  centres at integer + 0.5;
* depth is the **z-depth in the camera frame**; disparity = 1 / depth;
* world up is -y (the synthetic scenes' world: ground plane y = 0);
* yaw about the world up axis, pitch about the camera's own x axis, radians, right-hand
  rule about the axis.

Ray directions from :func:`pixel_rays` have camera-frame z = 1, so the ray parameter
``t`` of ``o + t d`` **is the z-depth** of the point. Code that needs metric distance
along the ray multiplies ``t`` by ``|d|`` (:func:`normalize_directions`).

Everything is pure ``jax.numpy``, batched over leading dimensions (which broadcast), and
computed in float32 at least (float64 inputs stay float64).
"""

from __future__ import annotations

import jax.numpy as jnp

from vq3d_jax.geometry.precision import at_least_float32

WORLD_UP = (0.0, -1.0, 0.0)


def intrinsics_from_fov(fov_deg, height: int, width: int) -> jnp.ndarray:
    """Pinhole K from the horizontal field of view: f = (W/2) / tan(fov/2), square pixels.

    Same K as ``datasets.cameras_np.intrinsics_from_fov`` — but note the argument order here
    is (height, width), that one's is (width, height). ``fov_deg`` may be batched [...].
    """
    fov = at_least_float32(fov_deg)
    focal = 0.5 * width / jnp.tan(0.5 * jnp.deg2rad(fov))
    zero, one = jnp.zeros_like(focal), jnp.ones_like(focal)
    rows = [
        jnp.stack([focal, zero, zero + 0.5 * width], -1),
        jnp.stack([zero, focal, zero + 0.5 * height], -1),
        jnp.stack([zero, zero, one], -1),
    ]
    return jnp.stack(rows, -2)


def rotation_about_axis(axis, angle) -> jnp.ndarray:
    """[..., 3, 3] rotation by ``angle`` about ``axis`` (right-hand rule).

    Rodrigues' formula: R = I + sin(a) [k]x + (1 - cos(a)) [k]x^2 with k = axis / |axis|.
    """
    axis = at_least_float32(axis)
    k = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
    angle = at_least_float32(angle)[..., None, None]
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = jnp.zeros_like(kx)
    skew = jnp.stack(
        [
            jnp.stack([zero, -kz, ky], -1),
            jnp.stack([kz, zero, -kx], -1),
            jnp.stack([-ky, kx, zero], -1),
        ],
        -2,
    )
    eye = jnp.eye(3, dtype=skew.dtype)
    return eye + jnp.sin(angle) * skew + (1.0 - jnp.cos(angle)) * (skew @ skew)


def _pose(rot: jnp.ndarray, centre: jnp.ndarray) -> jnp.ndarray:
    """Assembles [..., 4, 4] from a rotation [..., 3, 3] and a centre [..., 3]."""
    batch = jnp.broadcast_shapes(rot.shape[:-2], centre.shape[:-1])
    rot = jnp.broadcast_to(rot, batch + (3, 3))
    centre = jnp.broadcast_to(centre, batch + (3,)).astype(rot.dtype)
    top = jnp.concatenate([rot, centre[..., None]], -1)  # [..., 3, 4]
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], rot.dtype), batch + (1, 4))
    return jnp.concatenate([top, bottom], -2)


def look_at(eye, target, up=WORLD_UP) -> jnp.ndarray:
    """cam_to_world [..., 4, 4] at ``eye`` looking at ``target``, no roll.

    z = (target - eye)/|.|, x = z × up / |.| (right), y = z × x (down = -up projected):
    a right-handed OpenCV frame. Undefined when the view direction is parallel to ``up``.
    """
    eye, target = at_least_float32(eye), at_least_float32(target)
    up = jnp.asarray(up, eye.dtype)
    z = target - eye
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    x = jnp.cross(z, up)
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    y = jnp.cross(z, x)
    return _pose(jnp.stack([x, y, z], -1), eye)


def orbit(cam_to_world, pivot, yaw, pitch) -> jnp.ndarray:
    """Rotates a camera about ``pivot``: pitch about its own x axis, then yaw about world up.

    R = R(up, yaw) R(x_cam, pitch) acts on the whole pose (orientation and centre about
    the pivot), so a camera looking at the pivot keeps looking at it and at the same
    distance; no roll is added. Positive pitch tilts the nose up, moving the camera down.
    """
    c2w = at_least_float32(cam_to_world)
    pivot = jnp.asarray(pivot, c2w.dtype)
    up = jnp.broadcast_to(jnp.asarray(WORLD_UP, c2w.dtype), c2w.shape[:-2] + (3,))
    rot = rotation_about_axis(up, yaw) @ rotation_about_axis(c2w[..., :3, 0], pitch)
    centre = pivot + jnp.einsum("...ij,...j->...i", rot, c2w[..., :3, 3] - pivot)
    return _pose(rot @ c2w[..., :3, :3], centre)


def camera_directions(intrinsics, uv) -> jnp.ndarray:
    """K^-1 [u, v, 1]: camera-frame directions [..., 3] with z = 1.

    Back-substitution through an upper-triangular K with K[2,2] = 1 (skew allowed), so z
    is exactly 1 and no matrix inverse is formed.
    """
    k = intrinsics
    fx, s, cx = k[..., 0, 0], k[..., 0, 1], k[..., 0, 2]
    fy, cy = k[..., 1, 1], k[..., 1, 2]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - s * y) / fx
    return jnp.stack([x, y, jnp.ones_like(x)], -1)


def pixel_rays(intrinsics, cam_to_world, height: int, width: int):
    """World rays through the pixel centres (u, v) = (col + 0.5, row + 0.5).

    Returns ``origins`` and ``directions``, both [..., H, W, 3] (leading dims: the
    broadcast of the intrinsics' and the pose's). Directions are R K^-1 [u, v, 1]: their
    camera-frame z is 1, so ``t`` in ``o + t d`` is the z-depth (not the distance: that is
    ``t |d|``).
    """
    c2w = at_least_float32(cam_to_world)
    k = at_least_float32(intrinsics).astype(c2w.dtype)
    v, u = jnp.meshgrid(
        jnp.arange(height, dtype=c2w.dtype) + 0.5,
        jnp.arange(width, dtype=c2w.dtype) + 0.5,
        indexing="ij",
    )
    uv = jnp.stack([u, v], -1)  # [H, W, 2]
    cam = camera_directions(k[..., None, None, :, :], uv)  # [..., H, W, 3]
    rot = c2w[..., None, None, :3, :3]
    dirs = jnp.sum(rot * cam[..., None, :], -1)  # R @ d, broadcast over pixels
    origins = jnp.broadcast_to(c2w[..., None, None, :3, 3], dirs.shape)
    return origins, dirs


def normalize_directions(directions, eps: float = 1e-12):
    """Unit directions and the ray-length factor |d|.

    For z = 1 directions, |d| converts z-depth t into metric distance along the ray:
    distance = t |d|; densities integrate over distance (NeRF eq. 3), so a renderer fed
    z-depth intervals scales them by |d|.
    """
    directions = at_least_float32(directions)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(directions**2, -1), eps))
    return directions / norm[..., None], norm


def disparity_from_depth(depth) -> jnp.ndarray:
    """z-depth (+inf = sky) → disparity (0 = sky); non-positive depth also maps to 0."""
    depth = at_least_float32(depth)
    ok = jnp.isfinite(depth) & (depth > 0)
    return jnp.where(ok, 1.0 / jnp.where(ok, depth, 1.0), 0.0)


def world_to_camera(points, cam_to_world) -> jnp.ndarray:
    """X_cam = R^T (X - c) for world points [..., 3] (camera dims broadcast with points')."""
    c2w = at_least_float32(cam_to_world)
    rel = jnp.asarray(points, c2w.dtype) - c2w[..., :3, 3]
    return jnp.sum(c2w[..., :3, :3] * rel[..., :, None], -2)  # column i · rel = (R^T rel)_i


def project(points, intrinsics, cam_to_world):
    """World points [..., 3] → pixel coordinates [..., 2] and z-depth [...].

    Pinhole model x ~ K R^T (X - c) (Hartley & Zisserman, 2nd ed., §6.1, P = K R [I | -C]).
    The camera's leading dims must broadcast against the points' (insert axes to project
    many points per camera). Points at z = 0 give inf/NaN pixels and points behind the
    camera (z < 0) project mirrored: mask with ``depth > 0``.
    """
    cam = world_to_camera(points, cam_to_world)
    k = at_least_float32(intrinsics).astype(cam.dtype)
    uvw = jnp.sum(k * cam[..., None, :], -1)  # K @ X_cam
    return uvw[..., :2] / uvw[..., 2:3], cam[..., 2]


def unproject(uv, depth, intrinsics, cam_to_world) -> jnp.ndarray:
    """Pixels [..., 2] at z-depth [...] → world points [..., 3]; the inverse of `project`.

    X = c + R (depth K^-1 [u, v, 1]) (same model as :func:`project`).
    """
    c2w = at_least_float32(cam_to_world)
    k = at_least_float32(intrinsics).astype(c2w.dtype)
    depth = jnp.asarray(depth, c2w.dtype)[..., None]
    cam = camera_directions(k, jnp.asarray(uv, c2w.dtype)) * depth
    return jnp.sum(c2w[..., :3, :3] * cam[..., None, :], -1) + c2w[..., :3, 3]


def rebase_camera(cam_to_world, source_reference, target_reference, scale=1.0):
    """Re-expresses a camera given relative to one reference camera relative to another.

    The similarity M = T_target ∘ diag(s) ∘ T_source⁻¹ maps the source world onto the
    target world so that ``source_reference`` lands on ``target_reference`` and lengths
    scale by ``scale`` (a point at z-depth d in the source reference is at s·d in the
    target). Returns M applied to the pose: rotation R_t R_sᵀ R, centre M(c). Used to
    render a dataset's held-out cameras in a model's canonical frame (the scale from
    median depth matching, as for AbsRel). Projections are invariant: a point X seen
    by ``cam_to_world`` projects to the same pixel as M(X) seen by the result.
    """
    cam, src, tgt = (at_least_float32(m) for m in (cam_to_world, source_reference,
                                                   target_reference))
    scale = jnp.asarray(scale, cam.dtype)
    local_centre = world_to_camera(cam[..., :3, 3], src) * scale[..., None]
    centre = jnp.einsum("...ij,...j->...i", tgt[..., :3, :3], local_centre) + tgt[..., :3, 3]
    rotation = tgt[..., :3, :3] @ jnp.swapaxes(src[..., :3, :3], -1, -2) @ cam[..., :3, :3]
    return _pose(rotation, centre)
