"""Numpy pinhole cameras of the synthetic dataset: intrinsics, poses, orbits, rays.

Dataset-side code only (pure numpy, no TFDS, no jax): the library's differentiable
camera geometry belongs in ``vq3d_jax.geometry`` (jnp); the few camera helpers here are
kept small and exist so the dataset can be generated (and tested) on its own.

Conventions (the library's one, as in ``vq3d_jax.geometry.cameras``), shared by :mod:`.scenes`,
:mod:`.intersect` and :mod:`.raycast`:

* camera frame OpenCV: +x right, +y down, +z forward;
* ``cam_to_world`` 4x4: rotation columns are the camera axes in world coordinates, the last
  column is the camera centre;
* intrinsics ``K`` 3x3 in pixels, principal point at the image centre, pixel centres at
  integer + 0.5;
* world frame OpenCV-like (as in GMPI): world up is **-y**, the ground is the plane y = 0
  and objects stand on it at y <= 0;
* depth is the **z-depth in the camera frame** (not the distance along the ray); the sky
  at infinity has depth +inf (disparity 0);
* yaw rotates about the world up axis (0, -1, 0), pitch about the camera's x axis, both in
  radians, right-hand rule about the axis. Positive pitch tilts the camera nose-up about
  its own x axis; orbiting the pivot this moves the camera *down*.

Every ray direction is scaled so that its camera-frame z component is 1, so the ray
parameter ``t`` of a hit *is* its z-depth; no conversion is needed anywhere.
"""

from __future__ import annotations

import numpy as np

WORLD_UP = np.array([0.0, -1.0, 0.0])


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole K (pixels) for a horizontal FOV; square pixels, principal point at centre."""
    focal = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_deg))
    return np.array(
        [[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]], np.float64
    )


def rotation_about_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about ``axis`` (right-hand rule, Rodrigues)."""
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    skew = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(angle) * skew + (1.0 - np.cos(angle)) * (skew @ skew)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """OpenCV-frame cam_to_world (4x4) at ``eye`` looking at ``target``, no roll."""
    eye = np.asarray(eye, np.float64)
    z = np.asarray(target, np.float64) - eye
    z /= np.linalg.norm(z)
    # x = y × z with y pointing "down" = -up gives a right-handed frame with +y down.
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def orbit(c2w: np.ndarray, pivot: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Rotates a camera about ``pivot``: pitch about its own x axis, then yaw about world up.

    Both rotations act on the whole pose (orientation and centre), so a camera that looks
    at the pivot keeps looking at it, and pitch/yaw add no roll.
    """
    rot = rotation_about_axis(WORLD_UP, yaw) @ rotation_about_axis(c2w[:3, 0], pitch)
    out = np.eye(4)
    out[:3, :3] = rot @ c2w[:3, :3]
    out[:3, 3] = pivot + rot @ (c2w[:3, 3] - pivot)
    return out


def pixel_rays(
    intrinsics: np.ndarray, cam_to_world: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """World rays through the pixel centres of a batch of V cameras.

    Returns float32 origins (V, 3) and directions (3, V, H*W) (component-major, pixels
    row-major) scaled so that the camera-frame z component is 1: ``t`` along a ray is the
    z-depth of the point it reaches.
    """
    c2w = np.asarray(cam_to_world, np.float64).reshape(-1, 4, 4)
    k = np.broadcast_to(intrinsics, (len(c2w), 3, 3))
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([u.ravel(), v.ravel(), np.ones(height * width)])  # (3, N)
    # K^-1 [u, v, 1] has z = 1 for an upper-triangular K with K[2,2] = 1; fold R in first.
    m = (c2w[:, :3, :3] @ np.linalg.inv(k)).astype(np.float32)[..., None]  # (V, 3, 3, 1)
    pu, pv = pix[0].astype(np.float32), pix[1].astype(np.float32)
    # Three multiply-adds per component beat a batched 3x3 matmul plus a transpose.
    dirs = np.stack([m[:, j, 0] * pu + m[:, j, 1] * pv + m[:, j, 2] for j in range(3)])
    return c2w[:, :3, 3].astype(np.float32), dirs


def project(
    points: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., 3) → pixel coordinates (..., 2) and camera z-depth (...)."""
    rot, centre = cam_to_world[:3, :3], cam_to_world[:3, 3]
    cam = (np.asarray(points, np.float64) - centre) @ rot  # = R^T (X - c), row-wise
    uvw = cam @ np.asarray(intrinsics, np.float64).T
    return uvw[..., :2] / uvw[..., 2:3], cam[..., 2]
