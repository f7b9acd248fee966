"""VQ3D's depth losses (arXiv 2302.06833 §3.2) against a pseudo-GT depth map.

The pseudo-GT disparity (dataset depth on the synthetic scenes, a monocular estimate on
ImageNet) is area-resized to the render resolution, aligned to the rendered disparity
per image (least-squares scale and shift, or not at all for metric depth), and compared
per sample ("weighted pointwise") and after integration; with the splat lift also
against the decoder's own disparity map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vq3d_jax import geometry as geo
from vq3d_jax import losses
from vq3d_jax.tasks.common import resize_maps

ALIGNMENTS = ("scale_shift", "none")
SPACES = ("disparity", "log_disparity")


class DepthSupervision:
    """The depth terms of one stage-1 task: `loss.depth_alignment`, `loss.depth_space`."""

    def __init__(self, loss_config, render_size: int, camera_distance: float):
        if loss_config.depth_alignment not in ALIGNMENTS:
            raise ValueError(f"loss.depth_alignment={loss_config.depth_alignment!r}: one of "
                             f"{ALIGNMENTS}.")
        space = loss_config.get("depth_space", "disparity")
        if space not in SPACES:
            raise ValueError(f"loss.depth_space={space!r}: one of {SPACES}.")
        self.align = loss_config.depth_alignment == "scale_shift"
        self.render_size = render_size
        # 'log_disparity': disparities below that of 8 camera distances (beyond the scene,
        # where the last renderer sample of a sky ray sits) count alike.
        self.log_floor = None if space == "disparity" else 1.0 / (8.0 * camera_distance)

    def pseudo_disparity(self, depth) -> jax.Array:
        """Pseudo-GT depth [B, H, W] → disparity at the render's r² (area-averaged), [B, r²]."""
        return resize_maps(geo.disparity_from_depth(depth), self.render_size).reshape(
            depth.shape[0], -1)

    def ray_losses(self, rendered: dict, pseudo) -> dict | None:
        """Rendered rays [B, ...] against pseudo disparity [B, N] → {'weighted_pointwise',
        'integrated'}; None without depth."""
        if pseudo is None:
            return None
        b, num_samples = pseudo.shape[0], rendered["weights"].shape[-1]
        terms = losses.depth_losses(
            weights=rendered["weights"].reshape(b, -1, num_samples),
            sample_disparity=rendered["sample_disparity"].reshape(b, -1, num_samples),
            rendered_disparity=rendered["disparity"].reshape(b, -1),
            pseudo_disparity=pseudo,
            align=self.align,
            log_floor=self.log_floor,
        )
        return {k: terms[k] for k in ("weighted_pointwise", "integrated")}

    def lifted_loss(self, disparity, depth):
        """L1 between the decoder's own disparity map [B, R, R] and the pseudo-GT disparity
        (resized to it, aligned as for the rendered depth): it teaches the splat where to
        put things directly, as a 2D depth head learns, instead of only through renders."""
        b, size = disparity.shape[0], disparity.shape[1]
        pseudo = resize_maps(geo.disparity_from_depth(depth), size).reshape(b, -1)
        target = losses.disparity_target(pseudo, disparity.reshape(b, -1), align=self.align)
        return jnp.mean(losses.disparity_error(disparity.reshape(b, -1), target,
                                               self.log_floor))
