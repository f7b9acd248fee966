"""StyleGAN2 layers: equalised-lr conv/dense, [1,3,3,1] blur, minibatch stddev.

References: Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN" (StyleGAN2, arXiv 1912.04958); minibatch standard deviation
(inherited from ProGAN §3); equalised learning rate from ProGAN (Karras et al.
2018, §4.1). Networks built from them live in `models/` (the residual
discriminator: models/discriminator.py).

Layout is NHWC. Parameters are float32 (``param_dtype``); convolutions run in
``dtype``; the minibatch statistic and the final logits are float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax.nn.partitioning import partitioned

Dtype = Any

# Leaky ReLU slope 0.2 with gain √2 keeps activations at unit variance
# (StyleGAN2 keeps ProGAN's He-style gain for lrelu).
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)

# 1D taps of the separable [1,3,3,1] low-pass filter, normalised to unit DC gain.
BLUR_TAPS = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0


def lrelu(x: jax.Array) -> jax.Array:
    """Leaky ReLU (slope 0.2) times the √2 gain."""
    return nn.leaky_relu(x, LRELU_SLOPE) * jnp.asarray(LRELU_GAIN, x.dtype)


def normalize_second_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """x / √(mean(x²) + ε) over the last axis (StyleGAN's z and condition embeddings)."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def upfirdn2d(x: jax.Array, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """StyleGAN2's resampling of NHWC ``x`` with the separable [1,3,3,1] filter.

    Upsample by inserting ``up − 1`` zeros after every pixel, zero-pad both spatial axes
    by ``pad`` = (before, after), filter with [1,3,3,1]/8 ⊗ [1,3,3,1]/8 times up² (so a
    constant keeps its value through the zeros), keep every ``down``-th pixel. Output
    size per axis: (H·up + before + after − 3) // down, rounded up. Written as four
    shifted, weighted slices per axis (a separable FIR filter) rather than a depthwise
    conv. Used by the generator (up) and the discriminator (down) alike.
    """
    if up > 1:
        b, h, w, c = x.shape
        grid = jnp.zeros((b, h, up, w, up, c), x.dtype).at[:, :, 0, :, 0].set(x)
        x = grid.reshape(b, h * up, w * up, c)
    x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
    taps = [jnp.asarray(t * up, x.dtype) for t in BLUR_TAPS]
    n = len(taps)
    h = x.shape[1] - n + 1
    x = sum(taps[i] * x[:, i:i + h] for i in range(n))
    w = x.shape[2] - n + 1
    x = sum(taps[i] * x[:, :, i:i + w] for i in range(n))
    return x[:, ::down, ::down] if down > 1 else x


def blur(x: jax.Array, pad: tuple[int, int]) -> jax.Array:
    """Filter with [1,3,3,1]/8 ⊗ [1,3,3,1]/8 after zero padding ``pad`` (no resampling)."""
    return upfirdn2d(x, pad=pad)


def blur_downsample(x: jax.Array) -> jax.Array:
    """Blur then keep every second pixel: H×W → H/2×W/2 (used by 1×1 skip convs).

    Padding (1, 1) centres the 4-tap filter on each 2×2 output cell, as in the
    StyleGAN2 resampling (upfirdn2d with down=2).
    """
    return upfirdn2d(x, down=2, pad=(1, 1))


def upsample2d(x: jax.Array) -> jax.Array:
    """H×W → 2H×2W: zeros between pixels, then the filter (StyleGAN2's upsample2d:
    padding (2, 1) centres each output pixel between its input neighbours)."""
    return upfirdn2d(x, up=2, pad=(2, 1))


def _bias_and_activation(layer: nn.Module, y: jax.Array, bias_init: float) -> jax.Array:
    """The shared tail of the equalised layers: + bias·lr (stored ÷ lr), then lrelu.

    Called from inside the layer's compact ``__call__`` so the bias is its param.
    """
    if layer.use_bias:
        bias = layer.param(
            "bias",
            partitioned(nn.initializers.constant(bias_init / layer.lr_multiplier),
                        (layer.kernel_axes[-1],)),
            (layer.features,), layer.param_dtype,
        )
        y = y + (jnp.asarray(bias, jnp.float32) * layer.lr_multiplier).astype(layer.dtype)
    if layer.activation == "lrelu":
        return lrelu(y)
    if layer.activation is not None:
        raise ValueError(f"unknown activation {layer.activation!r}")
    return y


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate (ProGAN §4.1, used throughout StyleGAN2).

    The stored weight is N(0, 1/lr_multiplier²); at run time it is scaled by
    lr_multiplier/√fan_in, so every layer learns at the same speed under Adam.
    The bias is stored divided by lr_multiplier likewise. ``down=2`` blurs with
    [1,3,3,1] and convolves with stride 2 (StyleGAN2 downsampling); for a 1×1
    kernel the blur is followed by plain subsampling.
    ``activation``: 'lrelu' (with √2 gain) or None. ``gain`` multiplies the
    output after the activation (e.g. 1/√2 in residual blocks).
    ``kernel_axes`` are the logical names of the [kh, kw, in, out] kernel.
    """

    features: int
    kernel_size: int = 3
    down: int = 1
    use_bias: bool = True
    activation: str | None = "lrelu"
    gain: float = 1.0
    lr_multiplier: float = 1.0
    kernel_axes: tuple[str | None, ...] = (None, None, "conv_in", "conv_out")
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        in_ch = x.shape[-1]
        weight = self.param(
            "kernel",
            partitioned(nn.initializers.normal(1.0 / self.lr_multiplier), self.kernel_axes),
            (k, k, in_ch, self.features),
            self.param_dtype,
        )
        scale = self.lr_multiplier / math.sqrt(k * k * in_ch)
        weight = (jnp.asarray(weight, jnp.float32) * scale).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.down == 1:
            pad = ((k // 2, (k - 1) // 2),) * 2
            stride = 1
        elif self.down == 2:
            if k == 1:
                x = blur_downsample(x)
                pad, stride = ((0, 0), (0, 0)), 1
            else:
                # Blur with enough padding that the stride-2 'valid' conv gives
                # exactly H/2: pad k//2 + 1 each side (StyleGAN2 conv2d_resample).
                p = k // 2 + 1
                x = blur(x, (p, p))
                pad, stride = ((0, 0), (0, 0)), 2
        else:
            raise ValueError(f"down must be 1 or 2, got {self.down}")
        y = jax.lax.conv_general_dilated(
            x, weight, window_strides=(stride, stride), padding=pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = _bias_and_activation(self, y, bias_init=0.0)
        if self.gain != 1.0:
            y = y * jnp.asarray(self.gain, y.dtype)
        return y


class EqualDense(nn.Module):
    """Dense layer with equalised learning rate: y = x·(W·lr/√fan_in) + b·lr.

    Stored weight N(0, 1/lr²), bias initialised to ``bias_init`` / lr so that
    the effective initial bias is ``bias_init``. ``kernel_axes`` are the
    logical names of the [in, out] kernel.
    """

    features: int
    use_bias: bool = True
    bias_init: float = 0.0
    activation: str | None = "lrelu"
    lr_multiplier: float = 1.0
    kernel_axes: tuple[str | None, str | None] = ("conv_in", "conv_out")
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        weight = self.param(
            "kernel",
            partitioned(nn.initializers.normal(1.0 / self.lr_multiplier), self.kernel_axes),
            (in_features, self.features),
            self.param_dtype,
        )
        scale = self.lr_multiplier / math.sqrt(in_features)
        weight = (jnp.asarray(weight, jnp.float32) * scale).astype(self.dtype)
        y = jnp.dot(x.astype(self.dtype), weight)
        return _bias_and_activation(self, y, bias_init=self.bias_init)


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def minibatch_stddev(x: jax.Array, group_size: int = 4, num_features: int = 1) -> jax.Array:
    """Append the minibatch standard deviation feature(s) (ProGAN §3, StyleGAN2 D).

    The batch N is split into groups of G = min(group_size, N) samples (if N is
    not a multiple of G, the largest divisor of N below G is used); sample i
    belongs to group i mod (N/G), as in the official code's reshape. For each
    group the per-pixel, per-channel std over its G members is averaged over
    channels (split into ``num_features`` chunks) and pixels, and broadcast
    back as extra constant channels. Computed in float32.
    """
    n, h, w, c = x.shape
    g = _largest_divisor_at_most(n, group_size)
    f = num_features
    if c % f:
        raise ValueError(f"channels {c} not divisible by num_features {f}")
    y = x.astype(jnp.float32).reshape(g, n // g, h, w, f, c // f)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n/g, h, w, f, c/f]
    y = jnp.mean(y, axis=(1, 2, 4))  # [n/g, f]
    y = jnp.tile(y, (g, 1))  # sample i gets group i mod (n/g)
    y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's weight-modulated convolution (§2.2, eqs. 1–3) of ``x`` by style ``w``.

    Style s = A(w) (an equalised dense layer, bias initialised to 1); per sample the
    kernel is w'_{ijk} = s_i·w_{ijk}, demodulated to w''_{ijk} = w'_{ijk} /
    √(Σ_{i,k} w'_{ijk}² + ε). Computed without per-sample kernels: the input channels
    are scaled by s, convolved with the shared (equalised-lr) kernel and the outputs
    scaled by the demodulation coefficients, which is the same sum (StyleGAN2's
    "non-fused" form). ``up=2`` (3×3 kernels) convolves the zero-interleaved input (a
    transposed convolution) and filters with [1,3,3,1], in phase with `upsample2d`.
    Returns [B, H·up, W·up, features] in ``dtype``; no bias or activation.
    """

    features: int
    kernel_size: int = 3
    up: int = 1
    demodulate: bool = True
    kernel_axes: tuple[str | None, ...] = (None, None, "conv_in", "conv_out")
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        k, in_ch = self.kernel_size, x.shape[-1]
        if self.up not in (1, 2) or (self.up == 2 and k != 3):
            raise ValueError(f"up={self.up} with a {k}×{k} kernel: up is 1, or 2 with 3×3.")
        styles = EqualDense(in_ch, bias_init=1.0, activation=None, dtype=jnp.float32,
                            param_dtype=self.param_dtype, name="affine")(w)  # [B, in]
        weight = self.param("kernel", partitioned(nn.initializers.normal(1.0),
                                                  self.kernel_axes),
                            (k, k, in_ch, self.features), self.param_dtype)
        return modulated_conv(x, styles, weight, up=self.up, demodulate=self.demodulate,
                              dtype=self.dtype)


def modulated_conv(x: jax.Array, styles: jax.Array, weight: jax.Array, *, up: int = 1,
                   demodulate: bool = True, dtype: Dtype = jnp.float32) -> jax.Array:
    """StyleGAN2's modulated convolution of x [B, H, W, in] by styles [B, in] with the
    stored (unit-variance) kernel [k, k, in, out]: equalised by 1/√(k²·in), input channels
    scaled by the styles, the outputs demodulated (`ModulatedConv2d`)."""
    k, in_ch = weight.shape[0], weight.shape[2]
    weight = jnp.asarray(weight, jnp.float32) / math.sqrt(k * k * in_ch)
    x = (x.astype(jnp.float32) * styles[:, None, None, :]).astype(dtype)
    conv = weight.astype(dtype)
    if up == 1:
        y = jax.lax.conv_general_dilated(
            x, conv, (1, 1), ((k // 2, (k - 1) // 2),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
        y = jax.lax.conv_general_dilated(
            x, conv, (1, 1), ((k - 1, k - 1),) * 2, lhs_dilation=(2, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        # The zeros take 3/4 of the samples: the filter's DC gain is up² = 4.
        y = upfirdn2d(y, pad=(1, 1)) * jnp.asarray(4.0, y.dtype)
    if demodulate:
        # Σ_{i,k} (s_i w_ijk)² per sample and output channel [B, out].
        energy = jnp.einsum("bi,io->bo", jnp.square(styles),
                            jnp.sum(jnp.square(weight), axis=(0, 1)))
        y = y * jax.lax.rsqrt(energy + 1e-8)[:, None, None, :].astype(y.dtype)
    return y
