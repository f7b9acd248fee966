"""LPIPS v0.1 with the VGG16 trunk (Zhang et al. 2018, arXiv 1801.03924), in Flax.

d(x, y) = Σ_l 1/(H_l W_l) Σ_{h,w} Σ_c w_{l,c} (ŷ^l_{hwc}(x) − ŷ^l_{hwc}(y))²

with ŷ^l the channel-unit-normalised activations of five VGG16 taps (relu1_2,
relu2_2, relu3_3, relu4_3, relu5_3) and w_l ≥ 0 the learned linear heads.

Inputs are NHWC images in [−1, 1]. Distances are [B], float32.

Param tree (`LPIPS().init(...)["params"]`):
  vgg/conv{g}_{k}/kernel  [3, 3, I, O] (HWIO)   vgg/conv{g}_{k}/bias [O]
      g = 1..5 is the block between max-pools, k its conv; the torchvision index
      of each is `TORCH_CONV_INDEX` (conv1_1 → features.0, ..., conv5_3 → features.28).
  lin/lin{l}/kernel  [C_l, 1]  for the tap l = 0..4 (C = 64, 128, 256, 512, 512);
      the 1×1 conv C→1 of the LPIPS repo as a Dense over channels.

The weights come from public PyTorch files that users convert once
(`SPEC.convert_command`, through `params_from_torch`); `load_params` and
`make_lpips_fn` read the converted `.npz`. Plan mode, which traces a step and never runs
it, passes `TRACED_WEIGHTS` instead: the network's cost without a file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vq3d_jax.models import pretrained

Dtype = Any

SPEC = pretrained.WeightsSpec(
    network="lpips_vgg",
    source=(
        "torchvision's VGG16 ImageNet weights vgg16-397923af.pth "
        "(download.pytorch.org/models/vgg16-397923af.pth) and the LPIPS v0.1 linear layers "
        "vgg.pth (github.com/richzhang/PerceptualSimilarity, lpips/weights/v0.1/vgg.pth)"
    ),
    convert_command=(
        "python -m vq3d_jax.tools.convert_weights lpips vgg16-397923af.pth vgg.pth DST.npz"
    ),
)

# LPIPS's ScalingLayer: maps [−1, 1] inputs to roughly ImageNet-standardised ones.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# VGG16 conv widths per block (blocks are separated by 2×2 stride-2 max-pools).
BLOCK_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TAP_CHANNELS = tuple(widths[-1] for widths in BLOCK_WIDTHS)
NORM_EPS = 1e-10  # the LPIPS repo's `normalize_tensor` epsilon
# A `make_lpips_fn` path that reads nothing: the weights are zeros made inside the trace,
# so a traced step holds the network's convolutions (FLOPs, activations) but no weights.
TRACED_WEIGHTS = "(plan: LPIPS weights made in the trace, no file)"


def _torch_conv_indices() -> dict[str, int]:
    """conv{g}_{k} → its index in torchvision's `vgg16().features`.

    `features` is built from cfg D: every conv adds (Conv2d, ReLU), every pool one
    MaxPool2d, so the indices skip the ReLUs and the pools.
    """
    index, out = 0, {}
    for g, widths in enumerate(BLOCK_WIDTHS, start=1):
        for k in range(1, len(widths) + 1):
            out[f"conv{g}_{k}"] = index
            index += 2
        index += 1
    return out


TORCH_CONV_INDEX = _torch_conv_indices()  # conv1_1: 0, conv1_2: 2, conv2_1: 5, ... conv5_3: 28


def scale_inputs(x: jax.Array) -> jax.Array:
    """LPIPS's ScalingLayer, (x − shift) / scale per RGB channel, in float32."""
    x = jnp.asarray(x, jnp.float32)
    return (x - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)


def unit_normalize(f: jax.Array) -> jax.Array:
    """f / (‖f‖_c + 1e-10) over the channel axis (the repo's `normalize_tensor`).

    The norm uses a double `where` so that a pixel whose features are all zero
    (common after ReLU) has a finite gradient instead of sqrt′(0) = ∞ times 0;
    its value is unchanged (0 / 1e-10 = 0).
    """
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return f / (norm + NORM_EPS)


class VGG16Features(nn.Module):
    """VGG16 `features` up to relu5_3 → the five LPIPS taps, each [B, H_l, W_l, C_l] float32."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        h = x.astype(self.dtype)
        for g, widths in enumerate(BLOCK_WIDTHS, start=1):
            if g > 1:  # torch MaxPool2d(2, 2) floors odd sizes, as VALID does
                h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
            for k, width in enumerate(widths, start=1):
                h = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            param_dtype=jnp.float32, name=f"conv{g}_{k}")(h)
                h = nn.relu(h)
            taps.append(h.astype(jnp.float32))  # relu{g}_{last}, before the pool
        return taps


class LinearHeads(nn.Module):
    """The five LPIPS heads: per tap, Σ_c w_c Δ_c, then the spatial mean → [B] each, summed."""

    @nn.compact
    def __call__(self, sq_diffs: Sequence[jax.Array]) -> jax.Array:
        total = 0.0
        for tap, diff in enumerate(sq_diffs):
            # A 1×1 conv C→1 without bias is a Dense over channels; dropout is off at eval.
            per_pixel = nn.Dense(1, use_bias=False, dtype=jnp.float32,
                                 param_dtype=jnp.float32, name=f"lin{tap}")(diff)
            total = total + jnp.mean(per_pixel, axis=(1, 2, 3))
        return total


class LPIPS(nn.Module):
    """LPIPS-VGG distance between NHWC images in [−1, 1] → [B] float32.

    `dtype` is the VGG convolutions' compute dtype; normalisation, the heads and
    the distance stay float32.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of one shape, got {x.shape} and {y.shape}.")
        vgg = VGG16Features(dtype=self.dtype, name="vgg")
        # Two passes, not one over concat([x, y]): when y carries no gradient (a loss
        # target), its pass is not differentiated at all.
        fx = vgg(scale_inputs(x))
        fy = vgg(scale_inputs(y))
        # Eq. 1 of the paper: Σ_l 1/(H_l W_l) Σ_hw ‖w_l ⊙ (ŷ^l_x − ŷ^l_y)‖². The released
        # v0.1 code (whose heads we load) applies w_l to the *squared* difference,
        # Σ_c w_c Δ_c² — eq. 1 with the paper's w² absorbed into the learned w ≥ 0.
        sq_diffs = [jnp.square(unit_normalize(a) - unit_normalize(b)) for a, b in zip(fx, fy)]
        return LinearHeads(name="lin")(sq_diffs)


def abstract_params() -> dict:
    """The param tree as `jax.ShapeDtypeStruct`s (shapes do not depend on the image size)."""
    image = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda a, b: LPIPS().init(jax.random.key(0), a, b), image, image
    )
    return variables["params"]


def _take(state: Mapping[str, Any], key: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if key not in state:
        raise pretrained.WeightsError(f"{what} has no tensor {key!r} (expected shape {shape}).")
    value = np.asarray(state[key], dtype=np.float32)
    if value.shape != shape:
        raise pretrained.WeightsError(
            f"{what}: tensor {key!r} has shape {value.shape}, expected {shape}."
        )
    return value


def params_from_torch(vgg_state_dict: Mapping[str, Any],
                      lin_state_dict: Mapping[str, Any]) -> dict:
    """torchvision VGG16 + LPIPS v0.1 `vgg.pth` state dicts (numpy values) → LPIPS params.

    Conv weights (O, I, 3, 3) become HWIO kernels (both frameworks cross-correlate,
    so no flip); `classifier.*` of the VGG file is ignored; `lin{l}.model.1.weight`
    (1, C, 1, 1) (index 1 of Sequential(Dropout, Conv2d)) becomes the [C, 1] head.
    """
    vgg_what = "the VGG16 state dict (vgg16-397923af.pth)"
    lin_what = "the LPIPS linear-layer state dict (v0.1 vgg.pth)"
    expected = traverse_util.flatten_dict(abstract_params(), sep="/")

    vgg, used = {}, set()
    for name, index in TORCH_CONV_INDEX.items():
        k_shape = expected[f"vgg/{name}/kernel"].shape  # (3, 3, I, O)
        w_key, b_key = f"features.{index}.weight", f"features.{index}.bias"
        w = _take(vgg_state_dict, w_key, (k_shape[3], k_shape[2], k_shape[0], k_shape[1]),
                  vgg_what)
        b = _take(vgg_state_dict, b_key, (k_shape[3],), vgg_what)
        vgg[name] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "bias": b}
        used.update((w_key, b_key))
    unknown = sorted(k for k in vgg_state_dict if k not in used and not k.startswith("classifier."))
    if unknown:
        raise pretrained.WeightsError(f"{vgg_what} has unknown tensors: {unknown}.")

    lin, used = {}, set()
    for tap, channels in enumerate(TAP_CHANNELS):
        key = f"lin{tap}.model.1.weight"
        w = _take(lin_state_dict, key, (1, channels, 1, 1), lin_what)
        lin[f"lin{tap}"] = {"kernel": np.ascontiguousarray(w[:, :, 0, 0].T)}
        used.add(key)
    unknown = sorted(k for k in lin_state_dict if k not in used)
    if unknown:
        raise pretrained.WeightsError(f"{lin_what} has unknown tensors: {unknown}.")

    params = {"vgg": vgg, "lin": lin}
    pretrained.check_shapes(traverse_util.flatten_dict(params, sep="/"), expected,
                            "the converted LPIPS params")
    return params


def load_params(path: str, config_key: str = "loss.lpips_weights") -> dict:
    """The converted `.npz` → params (float32 numpy), checked path by path and shape by shape."""
    return pretrained.load(path, SPEC, config_key, abstract_params())


def make_lpips_fn(path: str, config_key: str = "loss.lpips_weights", *,
                  dtype: Dtype = jnp.float32) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """→ pure `(x, y) -> mean_b LPIPS(x_b, y_b)`, a float32 scalar, for jitted losses.

    The weights are read now (a missing or wrong file raises here, not mid-training)
    and closed over as constants; with `path` = `TRACED_WEIGHTS` they are zeros of their
    shapes, made on each call (for tracing only). `y` is the target: gradients reach `x`
    only.
    """
    if path == TRACED_WEIGHTS:
        shapes = abstract_params()
        weights = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    else:
        params = jax.tree.map(jnp.asarray, load_params(path, config_key))
        weights = lambda: params
    module = LPIPS(dtype=dtype)

    def lpips_loss(x: jax.Array, y: jax.Array) -> jax.Array:
        frozen = jax.lax.stop_gradient(weights())
        return jnp.mean(module.apply({"params": frozen}, x, jax.lax.stop_gradient(y)))

    return lpips_loss
