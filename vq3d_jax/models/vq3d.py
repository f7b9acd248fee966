"""VQ3D stage 1 (arXiv 2302.06833): one image → codes → contracted tri-plane NeRF → views.

`VQ3DAutoencoder` is the ViT-VQGAN encoder and quantizer (models/vit_vqgan.py) with a
tri-plane decoder head: image → codes → tri-planes, either as per-token plane patches
(`TriplaneDecoder`) or through an image-aligned feature map with depth, lifted here
(`lift_feature_map`). The planes are rendered by models/triplane_nerf.py.

Scene frame [choice; VQ3D does not say]: the canonical camera looks at the origin from
`distance` away, elevated like the dataset's camera (no roll; world up −y, OpenCV
frame), so the model's world is the scene's. World points are contracted
(mip-NeRF 360) around the origin, so content near the origin gets the tri-plane's
full resolution and the unbounded rest (ground to the horizon, sky) lives in the
contracted shell.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax import geometry as geo
from vq3d_jax.models.vit_vqgan import (
    Decoder2D,
    ViTStack,
    VitVQGAN,
    token_head,
    unpatchify,
    vit_trunk,
)

Dtype = Any


def tokens_to_planes(x: jax.Array, q: int, channels: int) -> jax.Array:
    """[B, G·G, 3·q·q·C] → [B, 3, G·q, G·q, C]: token (i, j) owns texels [iq:(i+1)q, jq:(j+1)q].

    Per plane a depth-to-space, as the 2D decoder does for pixels.
    """
    b, t, _ = x.shape
    grid = int(round(t**0.5))
    r = grid * q
    x = x.reshape(b, t, 3, q * q * channels)
    return jnp.stack([unpatchify(x[:, :, k], q, r, r, channels) for k in range(3)], axis=1)


class TriplaneDecoder(ViTStack):
    """Tokens [B, G·G, width] → tri-plane features [B, 3, R, R, C] float32, R = G·q.

    VQ3D's decoder head [choice; the paper leaves it open]: the same ViT trunk as `Decoder2D`,
    then a per-token projection into a q×q patch of each plane (xy, yz, zx);
    planes are channels-last.
    """

    plane_resolution: int = 256
    plane_channels: int = 32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        grid = int(round(tokens.shape[1] ** 0.5))
        r, c = self.plane_resolution, self.plane_channels
        if grid * grid != tokens.shape[1] or r % grid:
            raise ValueError(
                f"{tokens.shape[1]} tokens must form a square grid dividing the plane "
                f"resolution {r}."
            )
        q = r // grid
        x = vit_trunk(self, tokens.astype(self.dtype), grid, grid)
        x = token_head(self, x, 3 * q * q * c, "to_planes")
        return tokens_to_planes(x.astype(jnp.float32), q, c)


def canonical_camera(
    fov_deg: float, distance: float, size: int, elevation_deg: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Intrinsics and cam-to-world of the canonical view, looking at the origin.

    The camera stands `distance` from the origin, `elevation_deg` above the world's
    horizontal plane (world up is −y), with no roll: at elevation 0 it sits at
    (0, 0, −distance) facing +z with the world's axes. A dataset photographed from
    above (the synthetic scenes: 18°) gets the same elevation, so the model's world
    up is the scene's: yawing about it keeps the horizon level, and the ground lies
    along the zx plane.
    """
    elevation = np.deg2rad(elevation_deg)
    eye = distance * np.array([0.0, -np.sin(elevation), -np.cos(elevation)])
    cam_to_world = geo.look_at(jnp.asarray(eye, jnp.float32), jnp.zeros(3, jnp.float32))
    return geo.intrinsics_from_fov(fov_deg, size, size), cam_to_world


def lift_feature_map(
    feature_map: jax.Array,
    intrinsics: jax.Array,
    cam_to_world: jax.Array,
    *,
    scene_scale: float,
    near: float,
    fill: str = "none",
) -> tuple[jax.Array, jax.Array]:
    """One image-aligned map [R, R, 3C + 1] → (tri-planes [3, R, R, C], disparity [R, R]).

    [choice] The decoder predicts, per pixel of the canonical view (at the planes'
    resolution), a disparity in (0, 1/near) (sigmoid of the last channel; 0 = sky) and
    C features for each plane; each pixel's point at that depth on its canonical ray is
    contracted and splatted bilinearly into the xy, yz and zx planes
    (`geo.splat_to_triplane`); a texel keeps the weighted mean of what landed on it,
    scaled down where less than one pixel's weight did. Content thus starts where the
    image says it is, instead of at the texels a token happens to own: with per-token
    plane patches ('tokens') a pixel's surface point fell on its own token's texels for
    5 % of pixels on xy and 1 % on yz and zx, and the decoder had to learn that routing
    before it passed any image content (bench/results/README.md, stage-1 learning).
    `intrinsics` are the canonical camera's at the map's resolution.

    `fill='pull_push'` [choice] fills the texels nothing landed on from coarser averages of
    what did (`geo.pull_push_fill`) instead of leaving them 0. Without it, every ray of a
    yawed view that leaves the canonical frustum (the far field at the image's sides, the
    ground behind an object) reads all-zero features, one constant colour: the pink wedge
    that cost the tiny preset ~1.5 dB of ±20° novel-view PSNR (bench/results/README.md).
    """
    res = feature_map.shape[0]
    channels = (feature_map.shape[-1] - 1) // 3
    disparity = jax.nn.sigmoid(feature_map[..., -1].astype(jnp.float32)) / near
    origins, directions = geo.pixel_rays(intrinsics, cam_to_world, res, res)
    # Rays have camera z = 1, so the ray parameter is the depth 1/disparity.
    points = origins + directions / jnp.maximum(disparity, 1e-6)[..., None]
    coords = geo.contract_to_unit(points * scene_scale).reshape(-1, 3)
    features = feature_map[..., :-1].astype(jnp.float32).reshape(-1, 3, channels)
    sums, weights = geo.splat_to_triplane(coords, features, res)
    if fill == "none":  # the texel's weighted mean, scaled down where less than one landed
        return sums / jnp.maximum(weights, 1.0)[..., None], disparity
    if fill == "pull_push":
        means = sums / jnp.where(weights > 0, weights, 1.0)[..., None]
        return geo.pull_push_fill(means, jnp.minimum(weights, 1.0)), disparity
    raise ValueError(f"plane fill {fill!r}: 'none' or 'pull_push'.")


class VQ3DAutoencoder(VitVQGAN):
    """VQ3D's autoencoder: the ViT-VQGAN encoder and quantizer, a tri-plane decoder head.

    ``decoder_head``: 'triplane' (``TriplaneDecoder``: planes [B, 3, R, R, C]) or
    'feature_map' (``Decoder2D`` to an image-aligned [B, R, R, 3C + 1] map of per-pixel
    plane features and a disparity logit, which ``lift_feature_map`` splats into planes).
    With ``depth_decoder`` the disparity channel comes from a second decoder of the same
    size reading the same tokens (params 'disparity_decoder') instead of sharing the
    features' trunk.
    """

    decoder_head: str = "feature_map"
    plane_resolution: int = 256
    plane_channels: int = 32
    depth_decoder: bool = False

    def setup_decoder(self):
        if self.decoder_head == "triplane":
            self.decoder = TriplaneDecoder(
                variant=self.decoder_variant, plane_resolution=self.plane_resolution,
                plane_channels=self.plane_channels, **self.vit_options())
            return
        if self.decoder_head != "feature_map":
            raise ValueError(f"decoder_head={self.decoder_head!r}: 'triplane' or "
                             "'feature_map'.")
        # Image-aligned, at the planes' resolution.
        grid = self.image_size // self.patch_size
        if self.plane_resolution % grid:
            raise ValueError(f"plane_resolution {self.plane_resolution} is not a multiple "
                             f"of the {grid}×{grid} token grid.")
        patch_and_size = {"patch_size": self.plane_resolution // grid,
                          "image_size": self.plane_resolution}
        self.decoder = Decoder2D(
            variant=self.decoder_variant, **patch_and_size,
            out_channels=3 * self.plane_channels + (0 if self.depth_decoder else 1),
            **self.vit_options())
        if self.depth_decoder:
            self.disparity_decoder = Decoder2D(
                variant=self.decoder_variant, **patch_and_size, out_channels=1,
                **self.vit_options())

    def decode(self, quantized: jax.Array) -> jax.Array:
        decoded = self.decoder(quantized)
        if self.decoder_head == "feature_map" and self.depth_decoder:
            decoded = jnp.concatenate([decoded, self.disparity_decoder(quantized)], -1)
        return decoded
