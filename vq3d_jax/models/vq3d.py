"""VQ3D stage 1 (arXiv 2302.06833): one image → codes → contracted tri-plane NeRF → views.

`VQ3DAutoencoder` is the Flax module with parameters for the encoder, the
quantizer and the tri-plane decoder; the NeRF MLP is a separate module whose
parameters are passed explicitly to `render_view`, so the renderer's
`lax.map` chunking and the per-image `vmap` stay pure JAX.

Scene frame [choice, SPECS.md]: the canonical camera sits at (0, 0, −distance)
looking down +z at the origin, axes aligned with the world (OpenCV: +y down).
World points are contracted (mip-NeRF 360) around the origin, so content near
the origin gets the tri-plane's full resolution and the unbounded rest
(ground to the horizon, sky) lives in the contracted shell.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax import geometry as geo
from vq3d_jax.models.triplane_nerf import NeRFMLP, TriplaneDecoder
from vq3d_jax.models.vit_vqgan import Encoder, decode_variant
from vq3d_jax.nn.quantizer import FactorizedQuantizer

Dtype = Any


class VQ3DAutoencoder(nn.Module):
    """Images [B, S, S, 3] in [−1, 1] → (tri-planes [B, 3, R, R, C], quantizer aux)."""

    encoder_variant: str = "B"
    decoder_variant: str = "B"
    patch_size: int = 8
    codebook_size: int = 8192
    code_dim: int = 32
    beta: float = 0.25
    plane_resolution: int = 256
    plane_channels: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    attention_impl: str | None = None

    def setup(self):
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        vit = {"remat": self.remat, "attention_impl": self.attention_impl}
        self.encoder = Encoder(self.encoder_variant, self.patch_size, **vit, **common)
        self.quantizer = FactorizedQuantizer(
            codebook_size=self.codebook_size, code_dim=self.code_dim,
            width=decode_variant(self.decoder_variant)["width"], beta=self.beta, **common,
        )
        self.decoder = TriplaneDecoder(
            self.decoder_variant, plane_resolution=self.plane_resolution,
            plane_channels=self.plane_channels, **vit, **common,
        )

    def encode(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.quantizer(self.encoder(images))

    def decode_planes(self, quantized: jax.Array) -> jax.Array:
        return self.decoder(quantized)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        return self.decoder(self.quantizer.lookup(codes))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        quantized, aux = self.encode(images)
        return self.decode_planes(quantized), aux


def canonical_camera(fov_deg: float, distance: float, size: int) -> tuple[jax.Array, jax.Array]:
    """Intrinsics and cam-to-world of the canonical view: at (0, 0, −distance), facing +z."""
    cam_to_world = jnp.eye(4).at[2, 3].set(-distance)
    return geo.intrinsics_from_fov(fov_deg, size, size), cam_to_world


def triplane_field(mlp: NeRFMLP, mlp_params, planes: jax.Array, scene_scale: float = 1.0):
    """World points [..., 3] → (σ [...], colour/features [..., C]) of one image's tri-plane.

    Points are scaled to the model's units, contracted into [−1, 1]³
    (mip-NeRF 360 eq. 10, halved) and looked up on the xy, yz, zx planes;
    the features are summed (EG3D §4 aggregates the three planes) and decoded
    by the MLP. σ is per world unit: contraction changes where texels sit, not
    the density's units.
    """

    def field(points):
        coords = geo.contract_to_unit(points * scene_scale)
        features = geo.triplane_features(planes, coords, reduce="sum")
        density, color = mlp.apply({"params": mlp_params}, features)
        return density, color

    return field


def render_view(
    mlp: NeRFMLP,
    mlp_params,
    planes: jax.Array,
    intrinsics: jax.Array,
    cam_to_world: jax.Array,
    rng: jax.Array,
    *,
    height: int,
    width: int,
    near: float,
    far: float,
    num_samples: int,
    num_importance: int,
    scene_scale: float = 1.0,
    randomized: bool = True,
    background: jax.Array | None = None,
    chunk_size: int | None = None,
) -> dict[str, jax.Array]:
    """Renders one image's tri-plane from one camera → maps [H, W, ...] (colour in [0, 1]).

    Batch it with `jax.vmap` over (planes, intrinsics, cam_to_world, rng).
    """
    origins, directions = geo.pixel_rays(intrinsics, cam_to_world, height, width)
    return geo.render_rays(
        triplane_field(mlp, mlp_params, planes, scene_scale),
        origins,
        directions,
        rng,
        near=near,
        far=far,
        num_samples=num_samples,
        num_importance=num_importance,
        randomized=randomized,
        background=background,
        chunk_size=chunk_size,
    )
