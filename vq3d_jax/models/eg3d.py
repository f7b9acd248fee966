"""EG3D's tri-plane generator (Chan et al., arXiv 2112.07945, §4), with Mimic3D's 3D
branch and 3D super-resolution as options (Chen et al., arXiv 2303.09036, §3.2).

- Mapping: z and the camera label c (25 floats, EG3D's convention) → w (StyleGAN2-ADA's
  conditional mapping, `stylegan2.MappingNetwork`).
- Backbone: a StyleGAN2 skip synthesis at the plane resolution whose image has 3 × C
  channels, read as the xy, yz and zx planes [B, 3, R, R, C] (EG3D reshapes its 96
  channels into 3 × 32 the same way; it repeats xz where we have yz). With
  `conv3d_resolutions` (Mimic3D) the coarse planes are the 3D branch's output instead
  (`mimic3d.AwareBranch`); with `detail_planes`, `mimic3d.PlaneSuperResolution` adds
  planes at twice the resolution, whose features add to the coarse ones at lookup.
- `TriplaneDecoder` (EG3D's "OSG decoder"): the planes' mean feature → FC 64, softplus
  → FC 1 + F: raw σ (the density is softplus(raw − 1), `density`) and F features
  through the widened sigmoid (·1.002 − 0.001); equalised-lr layers as EG3D's.
- `SuperResolution` (EG3D's 2D super-resolution): the raw RGB and the F-channel feature
  image, resized (bilinear, antialiased) to `sr_input_resolution`, then one StyleGAN2
  block per doubling to the image resolution (two modulated 3×3 convolutions, the first
  ×2 up, no noise; toRGB added to the upsampled RGB), all styled by the last w.

Layout NHWC, parameters float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.models import mimic3d
from vq3d_jax.models.stylegan2 import Generator, SynthesisLayer, ToRGB, channels_at
from vq3d_jax.nn.stylegan import EqualDense, upsample2d

PLANES = 3


def to_planes(image: jax.Array) -> jax.Array:
    """[B, R, R, 3C] → [B, 3, R, R, C] (channels plane-major, as EG3D's view)."""
    b, h, w, c = image.shape
    return image.reshape(b, h, w, PLANES, c // PLANES).transpose(0, 3, 1, 2, 4)


def density(raw_sigma: jax.Array) -> jax.Array:
    """EG3D's density activation: softplus(raw − 1), so empty space starts transparent."""
    return jax.nn.softplus(raw_sigma.astype(jnp.float32) - 1.0)


class TriplaneDecoder(nn.Module):
    """Mean plane features [..., C] → (raw σ [...], features [..., F] in (−0.001, 1.001))."""

    hidden: int = 64
    features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = EqualDense(self.hidden, activation=None, kernel_axes=("mlp_in", "mlp_hidden"),
                       name="fc0")(x.astype(jnp.float32))
        out = EqualDense(1 + self.features, activation=None,
                         kernel_axes=("mlp_hidden", "mlp_out"), name="fc1")(jax.nn.softplus(h))
        return out[..., 0], jax.nn.sigmoid(out[..., 1:]) * (1.0 + 2e-3) - 1e-3


def resize(images: jax.Array, size: int) -> jax.Array:
    """[B, H, W, C] → [B, size, size, C], bilinear, antialiased when shrinking."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    shape = (images.shape[0], size, size, images.shape[-1])
    return jax.image.resize(images, shape, "linear", antialias=True)


class SuperResolution(nn.Module):
    """RGB [B, r, r, 3] and features [B, r, r, F] of a render, w [B, w_dim] → the image
    [B, resolution, resolution, 3] (module docstring)."""

    resolution: int
    input_resolution: int
    channel_base: int = 65536
    channel_max: int = 256
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, rgb: jax.Array, features: jax.Array, w: jax.Array) -> jax.Array:
        image = resize(rgb.astype(jnp.float32), self.input_resolution)
        x = resize(features.astype(jnp.float32), self.input_resolution).astype(self.dtype)
        res = self.input_resolution
        while res < self.resolution:
            res *= 2
            width = channels_at(res, self.channel_base, self.channel_max)
            x = SynthesisLayer(width, up=2, use_noise=False, dtype=self.dtype,
                               name=f"b{res}_conv0")(x, w)
            x = SynthesisLayer(width, use_noise=False, dtype=self.dtype,
                               name=f"b{res}_conv1")(x, w)
            image = upsample2d(image) + ToRGB(3, self.dtype, name=f"b{res}_torgb")(x, w)
        return image


class TriplaneGenerator(Generator):
    """z, c → ws (`mapping`); ws → tri-planes (`planes`); plane features → raw σ and
    features (`decode`); a rendered feature image → the image (`super_resolve`).

    `resolution` is the planes'; `channels` = 3 × the plane channels.
    """

    decoder_hidden: int = 64
    decoder_features: int = 32
    image_resolution: int = 512
    sr_input_resolution: int = 128
    sr_channel_base: int = 65536
    sr_channel_max: int = 256
    conv3d_resolutions: tuple[int, ...] = ()
    detail_planes: bool = False

    def setup(self):
        super().setup()
        if self.channels % PLANES:
            raise ValueError(f"channels={self.channels} must be 3 × the plane channels.")
        plane_channels = self.channels // PLANES
        self.branch_resolutions = mimic3d.check_resolutions(self.conv3d_resolutions,
                                                            self.resolution)
        if self.branch_resolutions:
            self.aware_branch = mimic3d.AwareBranch(self.branch_resolutions, plane_channels,
                                                    self.use_noise, self.dtype)
        if self.detail_planes:
            self.plane_sr = mimic3d.PlaneSuperResolution(plane_channels, self.use_noise,
                                                         self.dtype)
        self.decoder = TriplaneDecoder(self.decoder_hidden, self.decoder_features)
        self.super_resolution = SuperResolution(
            self.image_resolution, self.sr_input_resolution, self.sr_channel_base,
            self.sr_channel_max, self.dtype)

    def planes(self, ws: jax.Array) -> jax.Array:
        """ws → the (coarse) tri-plane [B, 3, R, R, C]."""
        if self.branch_resolutions:
            _, images = self.synthesis_network(ws, with_images=True)
            return self.aware_branch(
                {r: to_planes(images[r]) for r in self.branch_resolutions}, ws)
        return to_planes(self.synthesis_network(ws))

    def detail(self, coarse: jax.Array, ws: jax.Array) -> jax.Array:
        """Mimic3D's detail tri-plane [B, 3, 2R, 2R, C] from the coarse one."""
        return self.plane_sr(coarse, ws[:, -1])

    def decode(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.decoder(features)

    def super_resolve(self, rgb: jax.Array, features: jax.Array, ws: jax.Array) -> jax.Array:
        return self.super_resolution(rgb, features, ws[:, -1])

    def initialize(self, z: jax.Array, c: jax.Array) -> None:
        """Touches every parameter (for ``init``)."""
        ws = self.mapping(z, c)
        coarse = self.planes(ws)
        if self.detail_planes:
            self.detail(coarse, ws)
        self.decode(jnp.zeros((1, self.channels // PLANES), jnp.float32))
        r = self.sr_input_resolution
        self.super_resolve(jnp.zeros((1, r, r, 3), jnp.float32),
                           jnp.zeros((1, r, r, self.decoder_features), jnp.float32), ws)
