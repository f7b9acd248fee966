"""Synthetic-scene generation throughput on one CPU core; prints one JSON object.

Each scene: sample, ray-cast the canonical view and every held-out novel view, encode
all images as PNG (everything the TFDS builder does per example except TFDS's own
serialisation, which is timed separately as ``*_with_tfds_serialization``).

    python bench/synthetic_scenes.py [--num-scenes 400] [--num-scenes-128 100] [--out F]
"""

from __future__ import annotations

import os

# One core means one thread, numpy's BLAS included; set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# Runnable as `python bench/synthetic_scenes.py` from a checkout (no install needed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import emit  # noqa: E402
from vq3d_jax.datasets import raycast, scenes, synthetic_scenes  # noqa: E402

TARGET = 100.0  # scenes/s at 64^2 on one core


def _pin_to_one_core() -> int | None:
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return core
    except (AttributeError, OSError):  # not Linux, or not allowed
        return None


def _rate(resolution: int, num_scenes: int, serialize: bool) -> float:
    features = synthetic_scenes.features(resolution) if serialize else None
    for i in range(3):  # warm-up: imports, caches
        synthetic_scenes.to_tfds_example(raycast.generate_example("train", i, resolution), i)
    start = time.perf_counter()
    for i in range(num_scenes):
        ex = synthetic_scenes.to_tfds_example(raycast.generate_example("train", i, resolution), i)
        if features is not None:
            features.serialize_example(ex)
    return num_scenes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-scenes", type=int, default=400, help="scenes timed at 64^2")
    parser.add_argument("--num-scenes-128", type=int, default=100, help="scenes at 128^2")
    parser.add_argument("--out", default="", help="also write the JSON to this file")
    args = parser.parse_args()
    core = _pin_to_one_core()
    r64 = _rate(64, args.num_scenes, serialize=False)
    r128 = _rate(128, args.num_scenes_128, serialize=False)
    result = {
        "benchmark": "synthetic_scenes",
        "resolution": 64,
        "scenes_per_s": round(r64, 1),
        "target_scenes_per_s": TARGET,
        "meets_target": r64 >= TARGET,
        "compared_with": "issue target: >=100 scenes/s at 64^2 on one CPU core",
        "views_per_scene": 1 + scenes.NUM_NOVEL_VIEWS,
        "num_scenes": args.num_scenes,
        "res128_scenes_per_s": round(r128, 1),
        "res128_num_scenes": args.num_scenes_128,
        "scenes_per_s_with_tfds_serialization": round(_rate(64, args.num_scenes, True), 1),
        "res128_scenes_per_s_with_tfds_serialization": round(
            _rate(128, args.num_scenes_128, True), 1
        ),
        "pinned_core": core,
        "cpu": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }
    emit(result, args.out, indent=None)


if __name__ == "__main__":
    main()
