"""Image warps between cameras: bilinear sampling and depth-based backward warping.

A backward warp fills each pixel of a *target* view from a *source* image: the target
pixel is lifted to 3D with the target's z-depth, projected into the source camera
(perspective divide included) and the source image is sampled there bilinearly
(Hartley & Zisserman §13.4, the plane-induced case generalised to a depth map).
Pixels at infinite depth (the sky) move as directions: only the rotation applies.
Used as the warp-with-true-depth reference for novel-view PSNR; the view-consistency
loss of GMNR reprojects the same way.
"""

from __future__ import annotations

import jax.numpy as jnp

from vq3d_jax.geometry.cameras import pixel_rays, project
from vq3d_jax.geometry.precision import at_least_float32

# Stand-in z-depth for pixels at infinity: far enough that the camera baseline does not
# move them by a measurable fraction of a pixel, near enough for float32.
_FAR = 1e6


def bilinear_sample(image, uv) -> jnp.ndarray:
    """``image`` [H, W, C] at pixel coordinates ``uv`` [..., 2] (u → column, v → row).

    Pixel centres sit at integer + 0.5 (the camera convention); coordinates outside the
    centres' range clamp to the border pixels. Returns [..., C] in the image's float type.
    """
    image = at_least_float32(image)
    height, width = image.shape[:2]
    u = jnp.clip(uv[..., 0] - 0.5, 0.0, width - 1.0)
    v = jnp.clip(uv[..., 1] - 0.5, 0.0, height - 1.0)
    u0 = jnp.clip(jnp.floor(u), 0, max(width - 2, 0)).astype(jnp.int32)
    v0 = jnp.clip(jnp.floor(v), 0, max(height - 2, 0)).astype(jnp.int32)
    u1, v1 = jnp.minimum(u0 + 1, width - 1), jnp.minimum(v0 + 1, height - 1)
    wu, wv = (u - u0)[..., None], (v - v0)[..., None]
    top = image[v0, u0] + (image[v0, u1] - image[v0, u0]) * wu
    bottom = image[v1, u0] + (image[v1, u1] - image[v1, u0]) * wu
    return top + (bottom - top) * wv


def backward_warp(source_image, source_intrinsics, source_cam_to_world,
                  target_depth, target_intrinsics, target_cam_to_world):
    """The source image [H, W, C] seen from the target camera, given the target's z-depth.

    ``target_depth`` [h, w] (+inf for the background) fixes the output size; cameras are
    single [3, 3] / [4, 4]. Returns ([h, w, C] warped image, [h, w] bool ``visible``:
    the point lies in front of the source camera and inside its image). Occlusion in the
    source is not checked: an occluded point takes its occluder's colour.
    """
    height, width = target_depth.shape
    origins, directions = pixel_rays(target_intrinsics, target_cam_to_world, height, width)
    depth = at_least_float32(target_depth)
    depth = jnp.where(jnp.isfinite(depth), depth, _FAR)
    points = origins + depth[..., None] * directions  # t along a z = 1 ray is the z-depth
    uv, z = project(points, source_intrinsics, source_cam_to_world)
    src_h, src_w = source_image.shape[:2]
    inside = (uv[..., 0] >= 0) & (uv[..., 0] <= src_w) & (uv[..., 1] >= 0) & (uv[..., 1] <= src_h)
    return bilinear_sample(source_image, uv), inside & (z > 0)
