"""InceptionV3 as used for FID: the 2015-12-05 TensorFlow graph in Flax.

Architecture: Szegedy et al., "Rethinking the Inception Architecture for Computer
Vision" (arXiv 1512.00567), §5-6 and Fig. 5-7 / Table 1. The weights are the
ones FID is defined with (Heusel et al., arXiv 1706.08500): the TF graph
``inception-2015-12-05`` as ported to PyTorch by pytorch-fid
(``pt_inception-2015-12-05-6726825d.pth``). The module mirrors that port, which
differs from torchvision's ``inception_v3`` in ways that change the features:

* ``Mixed_5b..5d`` (FIDInceptionA), ``Mixed_6b..6e`` (FIDInceptionC) and
  ``Mixed_7b`` (FIDInceptionE_1) average-pool their pool branch with
  ``count_include_pad=False``: border windows divide by the number of real pixels
  (TF's SAME average pool), not by 9.
* ``Mixed_7c`` (FIDInceptionE_2) MAX-pools its pool branch (3x3, stride 1, pad 1):
  the TF graph has a max pool there (most likely a slip in that graph, but FID is
  defined by it).
* ``fc`` has 1008 outputs (the TF graph's classes), not 1000.
* BatchNorm eps is 0.001 everywhere (torchvision's BasicConv2d value, = TF's).

Inputs are resized to 299x299 with bilinear interpolation, half-pixel centres and
no antialiasing (torch ``F.interpolate(mode="bilinear", align_corners=False)``, as
pytorch-fid does) and mapped from [0, 1] to [-1, 1].

The param tree mirrors the torch names: ``params["Mixed_5b"]["branch1x1"]["conv"]
["kernel"]`` (HWIO) and ``[...]["bn"]`` with ``scale``, ``bias``, ``mean``, ``var``
(the running statistics are ordinary params, so one tree holds the whole network);
``params["fc"]["kernel"]`` is (2048, 1008). `params_from_torch` maps pytorch-fid's
state dict onto it; `load_params` reads the converted ``.npz``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vq3d_jax.models import pretrained

Dtype = Any

INPUT_SIZE = 299  # the TF graph's input resolution
POOL_FEATURES = 2048
NUM_CLASSES = 1008  # 1000 ImageNet classes + 8 unused, as in the TF graph
BN_EPS = 1e-3

SPEC = pretrained.WeightsSpec(
    network="inception_fid",
    source=(
        "pt_inception-2015-12-05-6726825d.pth, pytorch-fid's FID weights "
        "(github.com/mseitzer/pytorch-fid/releases, tag fid_weights_v0.1.0)"
    ),
    convert_command=(
        "python -m vq3d_jax.tools.convert_weights inception "
        "pt_inception-2015-12-05-6726825d.pth DST.npz"
    ),
)


# ----------------------------------------------------------------------------- input


def _bilinear_taps(n_in: int, n_out: int):
    """Source indices and weights of torch's bilinear, align_corners=False, no antialias.

    Half-pixel centres: output i samples input coordinate (i + 0.5) * n_in / n_out
    - 0.5, clamped at 0 below; the right neighbour is clamped to the last pixel.
    Computed in float64 on the host (sizes are static).
    """
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    return i0, i1, (1.0 - frac).astype(np.float32), frac.astype(np.float32)


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    i0, i1, w0, w1 = _bilinear_taps(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    return (jnp.take(x, i0, axis=axis) * w0.reshape(shape)
            + jnp.take(x, i1, axis=axis) * w1.reshape(shape))


def preprocess(images: jax.Array, resize: bool = True) -> jax.Array:
    """uint8 [B,H,W,3] in 0..255 or float in [0,1] → float32 [B,299,299,3] in [-1,1].

    The resize is bilinear with half-pixel centres and no antialias, i.e. torch's
    ``F.interpolate(mode="bilinear", align_corners=False)`` that pytorch-fid uses,
    also when downsampling (2 taps, no widened kernel). It is written as two
    2-tap gathers with host-computed float64 coordinates: `jax.image.resize`
    (``"linear"``, ``antialias=False``) is the same filter, but its float32 sample
    positions drift by up to ~1e-4 (in [-1, 1] units) on large downsamples.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [B, H, W, 3], got shape {images.shape}")
    if jnp.issubdtype(images.dtype, jnp.integer):
        x = images.astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
    if resize:
        x = _resize_axis(_resize_axis(x, 1, INPUT_SIZE), 2, INPUT_SIZE)
    return 2.0 * x - 1.0


# ----------------------------------------------------------------------------- pooling

_WINDOW = (1, 3, 3, 1)
_SAME_PAD = ((0, 0), (1, 1), (1, 1), (0, 0))


def avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool, pad 1, ``count_include_pad=False`` (NHWC).

    Each output is the mean over the window's in-image pixels only (TF's SAME
    average pool), which is what the FID graph computes; summed in float32.
    """
    h, w = x.shape[1], x.shape[2]
    total = jax.lax.reduce_window(
        x.astype(jnp.float32), 0.0, jax.lax.add, _WINDOW, (1, 1, 1, 1), _SAME_PAD
    )
    # In-image pixels per window along one axis: 2 at the borders, 3 inside.
    def counts(n: int) -> np.ndarray:
        i = np.arange(n)
        return np.minimum(i + 1, n - 1) - np.maximum(i - 1, 0) + 1

    count = np.outer(counts(h), counts(w)).astype(np.float32)[None, :, :, None]
    return (total / count).astype(x.dtype)


def max_pool_3x3_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 max pool, pad 1 (padding never wins: it is -inf), NHWC."""
    return jax.lax.reduce_window(
        x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, _WINDOW, (1, 1, 1, 1), _SAME_PAD
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3 stride-2 VALID max pool (torch ``max_pool2d(3, 2)``, floor mode)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


# ----------------------------------------------------------------------------- layers


class _ConvKernel(nn.Module):
    """Holds a conv kernel under ``<conv>/kernel`` (HWIO) like torch's ``.conv``."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("kernel", nn.initializers.lecun_normal(), self.shape, jnp.float32)


class _BatchNormStats(nn.Module):
    """Holds a BatchNorm's affine params and running statistics under ``<bn>/``."""

    features: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, ...]:
        shape = (self.features,)
        return (
            self.param("scale", nn.initializers.ones, shape, jnp.float32),
            self.param("bias", nn.initializers.zeros, shape, jnp.float32),
            self.param("mean", nn.initializers.zeros, shape, jnp.float32),
            self.param("var", nn.initializers.ones, shape, jnp.float32),
        )


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm (inference, eps 1e-3) → ReLU, as torchvision's.

    The BatchNorm is folded into the conv in float32 (one conv instead of conv +
    normalise, and no bf16 rounding of the running statistics).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)  # symmetric (rows, cols), torch-style
    dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = _ConvKernel((kh, kw, x.shape[-1], self.features), name="conv")()
        scale, bias, mean, var = _BatchNormStats(self.features, name="bn")()
        inv_std = scale * jax.lax.rsqrt(var + BN_EPS)
        kernel = (kernel * inv_std).astype(self.dtype)
        shift = (bias - mean * inv_std).astype(self.dtype)
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel,
            window_strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=self.precision,
        )
        return nn.relu(y + shift)


class _Block(nn.Module):
    """Shared fields of the Inception blocks."""

    dtype: Dtype = jnp.float32
    precision: Any = None

    def conv(self, features, kernel_size, name, strides=(1, 1), padding=(0, 0)):
        return BasicConv2d(
            features, kernel_size, strides, padding, self.dtype, self.precision, name=name
        )


class InceptionA(_Block):
    """35x35 block, Fig. 5 (5x5 branch kept as in the released graph); FID avg pool."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv(64, (1, 1), "branch1x1")(x)
        b5 = self.conv(48, (1, 1), "branch5x5_1")(x)
        b5 = self.conv(64, (5, 5), "branch5x5_2", padding=(2, 2))(b5)
        b3 = self.conv(64, (1, 1), "branch3x3dbl_1")(x)
        b3 = self.conv(96, (3, 3), "branch3x3dbl_2", padding=(1, 1))(b3)
        b3 = self.conv(96, (3, 3), "branch3x3dbl_3", padding=(1, 1))(b3)
        bp = self.conv(self.pool_features, (1, 1), "branch_pool")(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """35→17 grid reduction, §5 / Fig. 10: strided convs beside a strided max pool."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv(384, (3, 3), "branch3x3", strides=(2, 2))(x)
        bd = self.conv(64, (1, 1), "branch3x3dbl_1")(x)
        bd = self.conv(96, (3, 3), "branch3x3dbl_2", padding=(1, 1))(bd)
        bd = self.conv(96, (3, 3), "branch3x3dbl_3", strides=(2, 2))(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
    """17x17 block with 7x7 factorised into 1x7 and 7x1 (§3.2, Fig. 6); FID avg pool."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = self.conv(192, (1, 1), "branch1x1")(x)
        b7 = self.conv(c7, (1, 1), "branch7x7_1")(x)
        b7 = self.conv(c7, (1, 7), "branch7x7_2", padding=(0, 3))(b7)
        b7 = self.conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(b7)
        bd = self.conv(c7, (1, 1), "branch7x7dbl_1")(x)
        bd = self.conv(c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))(bd)
        bd = self.conv(c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))(bd)
        bd = self.conv(c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))(bd)
        bd = self.conv(192, (1, 7), "branch7x7dbl_5", padding=(0, 3))(bd)
        bp = self.conv(192, (1, 1), "branch_pool")(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """17→8 grid reduction (§5): strided 3x3 convs beside a strided max pool."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv(192, (1, 1), "branch3x3_1")(x)
        b3 = self.conv(320, (3, 3), "branch3x3_2", strides=(2, 2))(b3)
        b7 = self.conv(192, (1, 1), "branch7x7x3_1")(x)
        b7 = self.conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7)
        b7 = self.conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7)
        b7 = self.conv(192, (3, 3), "branch7x7x3_4", strides=(2, 2))(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
    """8x8 block with expanded 1x3 / 3x1 outputs (Fig. 7).

    ``pool="avg"`` (FIDInceptionE_1, Mixed_7b) or ``"max"`` (FIDInceptionE_2,
    Mixed_7c: the FID graph max-pools here).
    """

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv(320, (1, 1), "branch1x1")(x)
        b3 = self.conv(384, (1, 1), "branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                self.conv(384, (1, 3), "branch3x3_2a", padding=(0, 1))(b3),
                self.conv(384, (3, 1), "branch3x3_2b", padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = self.conv(448, (1, 1), "branch3x3dbl_1")(x)
        bd = self.conv(384, (3, 3), "branch3x3dbl_2", padding=(1, 1))(bd)
        bd = jnp.concatenate(
            [
                self.conv(384, (1, 3), "branch3x3dbl_3a", padding=(0, 1))(bd),
                self.conv(384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            pooled = avg_pool_3x3_exclude_pad(x)
        elif self.pool == "max":
            pooled = max_pool_3x3_same(x)
        else:
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        bp = self.conv(192, (1, 1), "branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# ----------------------------------------------------------------------------- network


class InceptionV3FID(nn.Module):
    """FID InceptionV3 → ``{"pool": [B, 2048], "logits": [B, 1008]}`` (float32).

    ``dtype`` is the conv compute dtype (bfloat16 allowed); BN folding, the
    global pool and the logits are float32. ``precision`` is passed to the convs
    (None: the backend default, e.g. TF32 convs on recent GPUs, like torch's).
    Inputs: uint8 in 0..255 or float in [0, 1], any size (see `preprocess`); with
    ``resize=False`` they must already be at least 75x75.
    """

    dtype: Dtype = jnp.float32
    precision: Any = None

    def setup(self):
        kw = dict(dtype=self.dtype, precision=self.precision)

        def conv(features, kernel_size, strides=(1, 1), padding=(0, 0)):
            return BasicConv2d(features, kernel_size, strides, padding, **kw)

        # Stem, Table 1: 299 → 149 → 147 → 147 → 73 → 73 → 71 → 35.
        self.Conv2d_1a_3x3 = conv(32, (3, 3), strides=(2, 2))
        self.Conv2d_2a_3x3 = conv(32, (3, 3))
        self.Conv2d_2b_3x3 = conv(64, (3, 3), padding=(1, 1))
        self.Conv2d_3b_1x1 = conv(80, (1, 1))
        self.Conv2d_4a_3x3 = conv(192, (3, 3))
        self.Mixed_5b = InceptionA(pool_features=32, **kw)
        self.Mixed_5c = InceptionA(pool_features=64, **kw)
        self.Mixed_5d = InceptionA(pool_features=64, **kw)
        self.Mixed_6a = InceptionB(**kw)
        self.Mixed_6b = InceptionC(channels_7x7=128, **kw)
        self.Mixed_6c = InceptionC(channels_7x7=160, **kw)
        self.Mixed_6d = InceptionC(channels_7x7=160, **kw)
        self.Mixed_6e = InceptionC(channels_7x7=192, **kw)
        self.Mixed_7a = InceptionD(**kw)
        self.Mixed_7b = InceptionE(pool="avg", **kw)
        self.Mixed_7c = InceptionE(pool="max", **kw)
        self.fc = nn.Dense(NUM_CLASSES, dtype=jnp.float32, param_dtype=jnp.float32)

    def __call__(self, images: jax.Array, resize: bool = True) -> dict[str, jax.Array]:
        x = preprocess(images, resize).astype(self.dtype)
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = max_pool_3x3_s2(x)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = max_pool_3x3_s2(x)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
            self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        # pool3: global average (torch adaptive_avg_pool2d(1)); FID's features.
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # Dropout is the identity at inference, so fc acts on pool directly.
        return {"pool": pool, "logits": self.fc(pool)}


# ----------------------------------------------------------------------------- weights


@functools.cache
def _abstract_params() -> dict:
    images = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda x: InceptionV3FID().init(jax.random.key(0), x, resize=False), images
    )
    return variables["params"]


def abstract_params() -> dict:
    """The param tree as `jax.ShapeDtypeStruct`s (shape inference only, no compile).

    Traced once per process; each call returns a fresh tree (callers may edit it).
    """
    return jax.tree.map(lambda leaf: leaf, _abstract_params())


# Torch BatchNorm2d tensor → our BN leaf.
_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def params_from_torch(state_dict: Mapping[str, Any]) -> dict:
    """pytorch-fid's state dict (name → array) → this module's param tree (float32).

    conv weights (O,I,H,W) → kernels (H,W,I,O); BN weight/bias/running_mean/
    running_var → scale/bias/mean/var; fc.weight (1008,2048) → kernel (2048,1008).
    ``*.num_batches_tracked`` is ignored. Raises `pretrained.WeightsError` on a
    name it does not know, or when a tensor is missing, extra or mis-shaped.
    """
    flat: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for name, value in state_dict.items():
        parts = name.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        array = np.asarray(value, dtype=np.float32)
        if parts[:1] == ["fc"] and len(parts) == 2 and parts[1] in ("weight", "bias"):
            # torch Linear stores (out, in); Dense wants (in, out).
            flat[f"fc/{'kernel' if parts[1] == 'weight' else 'bias'}"] = (
                array.T if parts[1] == "weight" else array
            )
        elif len(parts) >= 3 and parts[-2:] == ["conv", "weight"]:
            flat["/".join(parts[:-2] + ["conv", "kernel"])] = array.transpose(2, 3, 1, 0)
        elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN_LEAVES:
            flat["/".join(parts[:-2] + ["bn", _BN_LEAVES[parts[-1]]])] = array
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (
            f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        )
        raise pretrained.WeightsError(
            f"the state dict has {len(unknown)} tensors that are not pytorch-fid's "
            f"FID InceptionV3: [{shown}]"
        )
    flat = {k: np.ascontiguousarray(v) for k, v in flat.items()}
    expected = traverse_util.flatten_dict(abstract_params(), sep="/")
    pretrained.check_shapes(flat, expected, "the torch state dict")
    return traverse_util.unflatten_dict(flat, sep="/")


def load_params(path: str, config_key: str = "eval.fid.inception_weights") -> dict:
    """Reads converted FID Inception weights (see `SPEC`), checked against the module."""
    return pretrained.load(path, SPEC, config_key, abstract_params())
