"""Mimic3D's tri-plane layers (Chen et al., arXiv 2303.09036, §3.2): 3D-aware
convolutions, the 3D branch and the 3D super-resolution of the tri-plane.

Planes are [B, 3, R, R, C] in `geometry/triplane.py`'s layout: xy (row y, column x),
yz (row z, column y), zx (row x, column z).

- `aware3d`: each plane concatenated with the other two, each averaged over the axis the
  plane lacks and broadcast back along the axis they share (paper Fig. 3): xy gets
  mean_z(yz) by y and mean_z(zx) by x; yz gets mean_x(xy) by y and mean_x(zx) by z; zx
  gets mean_y(xy) by x and mean_y(yz) by z. Channels in plane order (xy, yz, zx), the
  plane's own features in its own slot, as the official code concatenates.
- `PlaneBlock`: a StyleGAN2 synthesis block on all three planes at once — two modulated
  3×3 convolutions (the first optionally ×2 up) with noise, bias and lrelu, then a
  modulated 1×1 toRGB to the plane channels, which is the block's output. One kernel is
  shared by the planes; a style per plane (one affine layer giving three). With
  `cross_plane` every layer reads `aware3d` of its input (3C → C).
- `AwareBranch` (the 3D branch): at each resolution of a contiguous list ending at the
  plane resolution, a cross-plane block on the backbone's tri-plane there plus the
  branch's previous output (×2 up, but at the last resolution).
- `PlaneSuperResolution` (3D super-resolution, stage 2): two per-plane blocks (no
  cross-plane mixing) from the coarse planes to detail planes at twice the resolution,
  summed with the coarse planes' features at lookup.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.nn.partitioning import partitioned
from vq3d_jax.nn.stylegan import EqualDense, lrelu, modulated_conv

Dtype = Any


def aware3d(planes: jax.Array) -> jax.Array:
    """[B, 3, R, R, C] → [B, 3, R, R, 3C]: each plane with the other two pooled over its
    missing axis and broadcast (module docstring)."""
    xy, yz, zx = planes[:, 0], planes[:, 1], planes[:, 2]  # [B, R(row), R(col), C]
    b, r, _, c = xy.shape

    def rows(v):  # v [B, R, C] indexed by the receiving plane's row
        return jnp.broadcast_to(v[:, :, None], (b, r, r, c))

    def cols(v):  # v [B, R, C] indexed by the receiving plane's column
        return jnp.broadcast_to(v[:, None], (b, r, r, c))

    new_xy = jnp.concatenate([xy, rows(yz.mean(1)), cols(zx.mean(2))], -1)  # over z
    new_yz = jnp.concatenate([cols(xy.mean(2)), yz, rows(zx.mean(1))], -1)  # over x
    new_zx = jnp.concatenate([rows(xy.mean(1)), cols(yz.mean(2)), zx], -1)  # over y
    return jnp.stack([new_xy, new_yz, new_zx], axis=1)


class PlaneConv(nn.Module):
    """A modulated convolution of the three planes [B, 3, R, R, C_in] with one kernel and a
    style per plane → [B, 3, R·up, R·up, features]; `cross_plane` convolves `aware3d` of
    the input instead."""

    features: int
    kernel_size: int = 3
    up: int = 1
    demodulate: bool = True
    cross_plane: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, planes: jax.Array, w: jax.Array) -> jax.Array:
        if self.cross_plane:
            planes = aware3d(planes)
        b, p, r, _, in_ch = planes.shape
        styles = EqualDense(p * in_ch, bias_init=1.0, activation=None, dtype=jnp.float32,
                            name="affine")(w)  # [B, 3·in]: a style per plane
        k = self.kernel_size
        kernel = self.param("kernel", partitioned(nn.initializers.normal(1.0),
                                                  (None, None, "conv_in", "conv_out")),
                            (k, k, in_ch, self.features), jnp.float32)
        y = modulated_conv(planes.reshape(b * p, r, r, in_ch), styles.reshape(b * p, in_ch),
                           kernel, up=self.up, demodulate=self.demodulate, dtype=self.dtype)
        return y.reshape((b, p) + y.shape[1:])


class PlaneLayer(nn.Module):
    """A styled 3×3 plane convolution (×`up`) + per-pixel noise + bias + lrelu (·√2)."""

    features: int
    up: int = 1
    cross_plane: bool = False
    use_noise: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, planes: jax.Array, w: jax.Array) -> jax.Array:
        y = PlaneConv(self.features, 3, up=self.up, cross_plane=self.cross_plane,
                      dtype=self.dtype, name="conv")(planes, w)
        if self.use_noise:
            strength = self.param("noise_strength", nn.initializers.zeros, (), jnp.float32)
            noise = jax.random.normal(self.make_rng("noise"), y.shape[:4] + (1,), jnp.float32)
            y = y + (strength * noise).astype(y.dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                          (self.features,), jnp.float32)
        return lrelu(y + bias.astype(y.dtype))


class PlaneBlock(nn.Module):
    """Two `PlaneLayer`s (the first ×`up`) and a 1×1 toRGB to `channels`, whose output the
    block returns [B, 3, R·up, R·up, channels]."""

    features: int
    channels: int
    up: int = 2
    cross_plane: bool = False
    use_noise: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, planes: jax.Array, w: jax.Array) -> jax.Array:
        layer = lambda up, name: PlaneLayer(  # noqa: E731
            self.features, up, self.cross_plane, self.use_noise, self.dtype, name=name)
        x = layer(self.up, "conv0")(planes, w)
        x = layer(1, "conv1")(x, w)
        y = PlaneConv(self.channels, 1, demodulate=False, cross_plane=self.cross_plane,
                      dtype=self.dtype, name="torgb")(x, w)
        bias = self.param("torgb_bias", nn.initializers.zeros, (self.channels,), jnp.float32)
        return y.astype(jnp.float32) + bias


def style_index(resolution: int) -> int:
    """The synthesis w of the backbone block at `resolution` that its 3D block takes: the
    block's last (4²: 1; r = 2^k: 2k − 3; StyleGAN2's layout in models/stylegan2.py)."""
    return 2 * int(math.log2(resolution)) - 3


def check_resolutions(resolutions, plane_resolution: int) -> tuple[int, ...]:
    """The 3D branch's resolutions, sorted: empty, or consecutive powers of two ending at
    the plane resolution (each block's output feeds the next)."""
    res = tuple(sorted(int(r) for r in resolutions))
    if not res:
        return res
    top = int(math.log2(plane_resolution))
    expected = tuple(2**k for k in range(int(math.log2(max(res[0], 1))), top + 1))
    if res != expected or res[0] < 4:
        raise ValueError(f"model.conv3d_resolutions={list(res)}: empty (off), or consecutive "
                         f"powers of two from ≥ 4 up to the plane resolution "
                         f"{plane_resolution}, e.g. {list(expected[-3:])}.")
    return res


class AwareBranch(nn.Module):
    """Mimic3D's 3D branch: the backbone's tri-planes at each resolution {r: [B, 3, r, r, C]}
    and its ws → the branch's tri-plane at the plane resolution [B, 3, R, R, C]."""

    resolutions: tuple[int, ...]
    channels: int
    use_noise: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, backbone_planes: dict, ws: jax.Array) -> jax.Array:
        out = None
        for res in self.resolutions:
            x = backbone_planes[res] if out is None else backbone_planes[res] + out
            up = 1 if res == self.resolutions[-1] else 2
            out = PlaneBlock(self.channels, self.channels, up=up, cross_plane=True,
                             use_noise=self.use_noise, dtype=self.dtype,
                             name=f"b3d{res}")(x, ws[:, style_index(res)])
        return out


class PlaneSuperResolution(nn.Module):
    """Mimic3D's 3D super-resolution: coarse planes [B, 3, R, R, C] and a w → detail planes
    [B, 3, 2R, 2R, C] through a ×2 and a ×1 per-plane block."""

    channels: int
    use_noise: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, coarse: jax.Array, w: jax.Array) -> jax.Array:
        x = PlaneBlock(self.channels, self.channels, up=2, use_noise=self.use_noise,
                       dtype=self.dtype, name="sr0")(coarse, w)
        return PlaneBlock(self.channels, self.channels, up=1, use_noise=self.use_noise,
                          dtype=self.dtype, name="sr1")(x, w)
