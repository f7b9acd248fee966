"""StyleGAN2's generator (Karras et al., arXiv 1912.04958): mapping network and
skip-architecture synthesis, from the layers of nn/stylegan.py.

- Mapping (§2 of StyleGAN, arXiv 1812.04948): z normalised to unit second moment, then
  8 equalised dense layers with lr multiplier 0.01 → w. The average w is tracked
  during training (`track_w_average`) for truncation at sampling (`truncate`, ψ).
- Synthesis (StyleGAN2 §4.1, Fig. 7b "skip" generator): a learned 4×4 constant, per
  resolution two modulated 3×3 convolutions (the first upsampling ×2) with per-pixel
  noise, bias and leaky ReLU, and a modulated 1×1 toRGB whose output is added to the
  upsampled image of the resolution below. One w per layer ("ws"): style mixing
  (`mix_styles`) switches from one w to another at a random layer.
- Sizes: C_r = min(channel_base // r, channel_max) channels at resolution r
  (channel_base 32768, channel_max 512 at 1024² in the paper).

Layout NHWC; parameters float32; convolutions in ``dtype``; images float32 in
[−1, 1]-ish (unbounded, as in StyleGAN2).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.nn.partitioning import partitioned
from vq3d_jax.nn.stylegan import (
    EqualDense,
    ModulatedConv2d,
    lrelu,
    normalize_second_moment,
    upsample2d,
)

Dtype = Any


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // resolution, channel_max)


def num_styles(resolution: int) -> int:
    """How many w the synthesis takes: two per resolution from 8², one conv and one
    toRGB at 4² (toRGB shares its w with the next resolution's first conv)."""
    return 2 * int(math.log2(resolution)) - 2


class MappingNetwork(nn.Module):
    """z [B, z_dim] → w [B, w_dim]: normalise, then `num_layers` equalised dense + lrelu.

    Conditional (``c_dim`` > 0, StyleGAN2-ADA's mapping as EG3D conditions it on the
    camera): c [B, c_dim] is embedded by an equalised dense layer to w_dim features,
    both halves are normalised to unit second moment and concatenated before the layers.
    """

    w_dim: int = 512
    num_layers: int = 8
    lr_multiplier: float = 0.01
    c_dim: int = 0

    @nn.compact
    def __call__(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        if (c is None) != (self.c_dim == 0):
            raise ValueError(f"c_dim={self.c_dim}: pass c exactly when the mapping is "
                             "conditional.")
        x = normalize_second_moment(z.astype(jnp.float32))
        if c is not None:
            embedded = EqualDense(self.w_dim, activation=None, kernel_axes=(None, "embed"),
                                  name="embed")(c.astype(jnp.float32))
            x = jnp.concatenate([x, normalize_second_moment(embedded)], axis=-1)
        for i in range(self.num_layers):
            x = EqualDense(self.w_dim, lr_multiplier=self.lr_multiplier,
                           kernel_axes=("embed", "mlp"), name=f"fc{i}")(x)
        return x


def track_w_average(w_average: jax.Array, w: jax.Array, beta: float = 0.995) -> jax.Array:
    """The running mean of w [B, w_dim] (StyleGAN2's w_avg: lerp by 1 − β per step)."""
    return jnp.mean(w, axis=0) + beta * (w_average - jnp.mean(w, axis=0))


def truncate(ws: jax.Array, w_average: jax.Array, psi: float, cutoff: int | None = None):
    """The truncation trick: w ← w̄ + ψ·(w − w̄) on the first `cutoff` layers (all: None).

    ψ = 1 leaves w as it is; ψ = 0 gives every sample the average w.
    """
    truncated = w_average + psi * (ws - w_average)
    if cutoff is None:
        return truncated
    layer = jnp.arange(ws.shape[1])[None, :, None]
    return jnp.where(layer < cutoff, truncated, ws)


def mix_styles(rng: jax.Array, ws: jax.Array, ws_other: jax.Array, probability: float):
    """Style mixing regularisation (StyleGAN §3.1): per sample, with `probability`, the
    layers from a random cutoff in [1, num_ws) on take the other w."""
    b, n = ws.shape[:2]
    mix_rng, cut_rng = jax.random.split(rng)
    mixing = jax.random.bernoulli(mix_rng, probability, (b,))
    cutoff = jnp.where(mixing, jax.random.randint(cut_rng, (b,), 1, n), n)
    layer = jnp.arange(n)[None, :]
    return jnp.where((layer >= cutoff[:, None])[..., None], ws_other, ws)


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv (optionally ×2 up) + per-pixel noise + bias + lrelu (·√2)."""

    features: int
    up: int = 1
    use_noise: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        y = ModulatedConv2d(self.features, 3, up=self.up, dtype=self.dtype, name="conv")(x, w)
        if self.use_noise:
            strength = self.param("noise_strength", nn.initializers.zeros, (), jnp.float32)
            noise = jax.random.normal(self.make_rng("noise"), y.shape[:3] + (1,), jnp.float32)
            y = y + (strength * noise).astype(y.dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                          (self.features,), jnp.float32)
        return lrelu(y + bias.astype(y.dtype))


class ToRGB(nn.Module):
    """Modulated 1×1 conv without demodulation + bias: features → image channels."""

    channels: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        y = ModulatedConv2d(self.channels, 1, demodulate=False, dtype=self.dtype,
                            kernel_axes=(None, None, "conv_in", None), name="conv")(x, w)
        bias = self.param("bias", nn.initializers.zeros, (self.channels,), jnp.float32)
        return y.astype(jnp.float32) + bias


class SynthesisNetwork(nn.Module):
    """ws [B, num_styles, w_dim] → image [B, R, R, channels] float32 (skip architecture).

    ``with_features`` also returns each resolution's features {r: [B, r, r, C_r]}, which
    heads built on StyleGAN2 read (GMPI's alpha branch); ``with_images`` instead the skip
    path's image at each resolution {r: [B, r, r, channels]} (Mimic3D's 3D branch).
    """

    resolution: int = 256
    channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    use_noise: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ws: jax.Array, with_features: bool = False, with_images: bool = False):
        log2 = int(math.log2(self.resolution))
        if 2**log2 != self.resolution or log2 < 2:
            raise ValueError(f"resolution must be a power of two ≥ 4, got {self.resolution}")
        if ws.shape[1] != num_styles(self.resolution):
            raise ValueError(f"{ws.shape[1]} styles for {self.resolution}²; the synthesis "
                             f"takes {num_styles(self.resolution)}.")
        width = lambda r: channels_at(r, self.channel_base, self.channel_max)  # noqa: E731
        layer = lambda f, name, up=1: SynthesisLayer(  # noqa: E731
            f, up=up, use_noise=self.use_noise, dtype=self.dtype, name=name)
        const = self.param("const", nn.initializers.normal(1.0), (4, 4, width(4)), jnp.float32)
        x = jnp.broadcast_to(const.astype(self.dtype), (ws.shape[0],) + const.shape)
        x = layer(width(4), "b4_conv1")(x, ws[:, 0])
        image = ToRGB(self.channels, self.dtype, name="b4_torgb")(x, ws[:, 1])
        features, images = {4: x}, {4: image}
        for i, res in enumerate(2**k for k in range(3, log2 + 1)):
            w0, w1, w_rgb = ws[:, 2 * i + 1], ws[:, 2 * i + 2], ws[:, 2 * i + 3]
            x = layer(width(res), f"b{res}_conv0", up=2)(x, w0)
            x = layer(width(res), f"b{res}_conv1")(x, w1)
            image = upsample2d(image) + ToRGB(self.channels, self.dtype,
                                              name=f"b{res}_torgb")(x, w_rgb)
            features[res], images[res] = x, image
        if with_images:
            return image, images
        return (image, features) if with_features else image


class Generator(nn.Module):
    """z [B, z_dim] → image: `MappingNetwork` then `SynthesisNetwork`, one w per layer.

    ``__call__(z, psi=1.0, w_average=None)``; `mapping`/`synthesis` are the halves (the
    train step maps, tracks w̄ and mixes styles between them). Heads built on StyleGAN2
    subclass it (GMPI: models/gmpi.py), extending `setup` and `synthesis`.
    """

    resolution: int = 256
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 32768
    channel_max: int = 512
    channels: int = 3
    use_noise: bool = True
    dtype: Dtype = jnp.float32
    c_dim: int = 0  # a conditional mapping (EG3D's camera): `mapping(z, c)`

    def setup(self):
        self.mapping_network = MappingNetwork(self.w_dim, self.mapping_layers, c_dim=self.c_dim)
        self.synthesis_network = SynthesisNetwork(
            self.resolution, self.channels, self.channel_base, self.channel_max,
            self.use_noise, self.dtype)

    def mapping(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        """z (and c) → ws [B, num_styles, w_dim] (the same w for every layer)."""
        w = self.mapping_network(z, c)
        return jnp.broadcast_to(w[:, None], (w.shape[0], num_styles(self.resolution),
                                             w.shape[-1]))

    def synthesis(self, ws: jax.Array, with_features: bool = False):
        return self.synthesis_network(ws, with_features)

    def __call__(self, z: jax.Array, *synthesis_args, psi: float = 1.0,
                 w_average: jax.Array | None = None):
        """z → ws (truncated towards `w_average` by ψ) → `synthesis(ws, *synthesis_args)`."""
        ws = self.mapping(z)
        if w_average is not None and psi != 1.0:
            ws = truncate(ws, w_average, psi)
        return self.synthesis(ws, *synthesis_args)
