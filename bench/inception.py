r"""FID Inception feature throughput (images/s) at batch 256, 299², float32 vs bfloat16.

  python bench/inception.py [--weights=weights/inception_fid.npz] [--batch=256] \
      [--image_size=256] [--repeats=10] [--out=result.json]

Times the whole feature path FID runs: uint8 images at `--image_size` → bilinear
resize to 299² → InceptionV3 → 2048-d pool features, jitted on one device, for a
float32 trunk and a bfloat16 trunk (float32 BN folding, pool and logits). Also
reports the bf16 features' error against float32 on the same images: the max
over images of ‖f_bf16 − f_fp32‖ / ‖f_fp32‖ (the issue asks ≤ 1e-3 to use bf16).
With `--weights` the error is measured on the real network; without, on
He-initialised random weights (throughput does not depend on the values, the
error does). Peer on the same H100: a PyTorch InceptionV3 forward, ~4,500 img/s;
goal ≥ 9,000 img/s. Figures hold only on an accelerator.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import emit, median_seconds  # noqa: E402
from vq3d_jax.models import inception  # noqa: E402

PYTORCH_IMAGES_PER_S = 4500.0


def random_params(seed: int = 0) -> dict:
    """He-scaled conv kernels, unit BN statistics: features stay O(1) through the net."""
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name and len(leaf.shape) == 4:
            fan_in = np.prod(leaf.shape[:3])
            return rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        if name.endswith("['var']") or name.endswith("['scale']"):
            return np.ones(leaf.shape, np.float32)
        if "fc" in name and "kernel" in name:
            return rng.normal(0, 0.02, leaf.shape).astype(np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(init, inception.abstract_params())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    params = inception.load_params(args.weights) if args.weights else random_params()
    params = jax.device_put(params)
    images = jax.random.randint(
        jax.random.key(0), (args.batch, args.image_size, args.image_size, 3), 0, 256, jnp.uint8
    )
    result = {
        "benchmark": "inception_features",
        "device": jax.devices()[0].device_kind,
        "batch": args.batch,
        "input": f"uint8 {args.image_size}² → 299² bilinear",
        "weights": args.weights or "random (He init)",
    }
    features = {}
    for dtype in ("float32", "bfloat16"):
        net = inception.InceptionV3FID(dtype=jnp.dtype(dtype))
        forward = jax.jit(lambda p, x, net=net: net.apply({"params": p}, x)["pool"])
        seconds = median_seconds(forward, params, images, repeats=args.repeats)
        features[dtype] = np.asarray(forward(params, images), np.float64)
        result[f"{dtype}_images_per_s"] = args.batch / seconds
        result[f"{dtype}_vs_pytorch"] = args.batch / seconds / PYTORCH_IMAGES_PER_S
    error = np.linalg.norm(features["bfloat16"] - features["float32"], axis=1) / np.maximum(
        np.linalg.norm(features["float32"], axis=1), 1e-12)
    result["bf16_max_relative_feature_error"] = float(error.max())
    result["compared_with"] = (
        "PyTorch InceptionV3 forward on the same H100, ~4,500 img/s (issue 4); goal >= 9,000 "
        "img/s, bf16 only if its features stay within 1e-3 relative of float32")
    emit(result, args.out)


if __name__ == "__main__":
    main()
