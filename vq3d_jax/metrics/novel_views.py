"""Scores at a dataset's held-out cameras: the model's views beside two model-free answers.

The references place a model's novel-view PSNR between a floor and what geometry alone
allows: the input image itself as the novel view (no 3D at all), and the input
backward-warped into the view with the view's *true* depth (`geometry.backward_warp`; a
perfect geometry with no inpainting, occluded pixels included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax import geometry as geo
from vq3d_jax import losses

# Held-out views this far off in yaw count towards the `_yaw20` figures.
LARGE_YAW = np.deg2rad(15.0)


def per_view_psnr(rendered: jax.Array, truth: jax.Array) -> jax.Array:
    """Views [B, K, S, S, 3] in [−1, 1] → PSNR [B, K]."""
    b, k = truth.shape[:2]
    flat = lambda x: x.reshape((b * k,) + x.shape[2:])  # noqa: E731
    return losses.psnr(flat(rendered), flat(truth), max_val=2.0).reshape(b, k)


def reference_views(images, intrinsics, cam_to_world, novel_depth, novel_intrinsics,
                    novel_cam_to_world) -> tuple[jax.Array, jax.Array]:
    """The inputs [B, S, S, 3] as each of the K novel views, and warped into them with the
    views' true depth [B, K, S, S] → (copy, warp), each [B, K, S, S, 3]."""
    k = novel_depth.shape[1]
    copy = jnp.broadcast_to(images[:, None], (images.shape[0], k) + images.shape[1:])

    def warp(image, src_k, src_c2w, depth, dst_k, dst_c2w):
        return geo.backward_warp(image, src_k, src_c2w, depth, dst_k, dst_c2w)[0]

    per_view = jax.vmap(warp, in_axes=(None, None, None, 0, 0, 0))
    warped = jax.vmap(per_view)(images, intrinsics, cam_to_world, novel_depth,
                                novel_intrinsics, novel_cam_to_world)
    return copy, warped


def summaries(name: str, psnr: jax.Array, yaw_pitch: jax.Array) -> dict[str, jax.Array]:
    """PSNR [B, K] → per-example means over all K views (`name`) and over the views more
    than 15° off in yaw (`name_yaw20`: the ±20° ones of the synthetic scenes)."""
    large = (jnp.abs(yaw_pitch[..., 0]) > LARGE_YAW).astype(jnp.float32)
    return {name: jnp.mean(psnr, axis=1),
            f"{name}_yaw20": jnp.sum(psnr * large, 1) / jnp.maximum(jnp.sum(large, 1), 1)}
