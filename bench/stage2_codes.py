r"""VQ3D stage 2: train steps/s on precomputed codes vs. codes encoded on the fly.

  python bench/stage2_codes.py [--data_dir=DIR] [--batch=0] [--steps=10] [--repeats=5] \
      [--stage1_preset=tiny] [--data_name=synthetic_scenes/mini] [--image_size=32] \
      [--out=result.json]

Builds a stage-1 run of `--stage1_preset` at `--image_size` (its checkpoint holds
random parameters drawn with numpy: encoding costs the same whatever the weights,
and compiling the real init takes ~40 s on CPU), writes the train split's codes
with `vq3d_jax.tools.precompute_codes`, then times the stage-2 `tiny` train step
(prior, `--batch` = 0: the preset's 32) both ways, after compile:

- `step_only`: the same device-resident batch every step (codes [B, L] or uint8
  images [B, S, S, 3] through the frozen encoder);
- `with_input`: each step takes the next batch of the real grain pipeline (codes
  records, or PNG decoding) and assembles the global batch first.

Times are medians over `--repeats` runs of `--steps` steps. Also reported: the time
to precompute the codes (encode + write, compile included) and per-image encode
throughput of the precompute pass.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from bench.common import emit, median_seconds  # noqa: E402
from configs import vq3d_stage1, vq3d_stage2  # noqa: E402
from vq3d_jax.datasets import pipeline  # noqa: E402
from vq3d_jax.tasks import get_task  # noqa: E402
from vq3d_jax.tools import precompute_codes  # noqa: E402
from vq3d_jax.train import runtime, sharding  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch folder; default a new temp folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir ('' = a scratch folder).")
_DATA_NAME = flags.DEFINE_string("data_name", "synthetic_scenes/mini", "TFDS dataset.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Image size of both stages.")
_STAGE1 = flags.DEFINE_string("stage1_preset", "tiny", "configs/vq3d_stage1.py preset.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch; 0 = the stage-2 tiny preset's.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (median).")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON here.")


def make_stage1_run(workdir: str, data_dir: str) -> str:
    """A stage-1 workdir: config.json and a step-0 checkpoint of random parameters."""
    config = vq3d_stage1.get_config(_STAGE1.value)
    config.data.update(name=_DATA_NAME.value, data_dir=data_dir, image_size=_IMAGE_SIZE.value)
    config.loss.lpips_weights = ""
    runtime.write_random_run(get_task(config), config, workdir, scale=0.05)
    return workdir


def stage2_config(stage1_dir: str, data_dir: str, codes_dir: str):
    config = vq3d_stage2.get_config("tiny")
    config.stage1.workdir = stage1_dir
    config.data.update(name=_DATA_NAME.value, data_dir=data_dir, image_size=_IMAGE_SIZE.value,
                       codes_dir=codes_dir, worker_count=0)
    if _BATCH.value:
        config.global_batch_size = _BATCH.value
    config.eval.global_batch_size = config.global_batch_size
    return config


def time_path(config) -> dict:
    """Step-only and with-input seconds per step of one training path."""
    task = get_task(config)
    rt = runtime.build_runtime(task, config)
    state = runtime.init_state(rt)
    step = runtime.compile_train_step(rt)
    train_iter = pipeline.create_train_iterator(
        config.data, global_batch_size=config.global_batch_size, seed=0,
        codes_length=task.length, codes_vocab_size=task.vocab_size)
    cell = {"state": state}
    n = _STEPS.value

    def run(get_batch):
        s = cell["state"]
        for _ in range(n):
            s, metrics = step(s, get_batch())
        cell["state"] = s  # the step donates its input state
        return metrics

    with rt.scope():
        fixed = sharding.global_batch({k: v for k, v in next(train_iter).items()
                                       if k in task.train_keys}, rt.mesh)
        start = time.perf_counter()
        cell["state"], metrics = step(cell["state"], fixed)
        jax.block_until_ready(metrics)
        first_step_s = time.perf_counter() - start  # compile + one step
        step_only = median_seconds(run, lambda: fixed, repeats=_REPEATS.value) / n

        def next_batch():
            local = next(train_iter)
            return sharding.global_batch({k: local[k] for k in task.train_keys}, rt.mesh)

        with_input = median_seconds(run, next_batch, repeats=_REPEATS.value) / n
    return {
        "train_keys": list(task.train_keys),
        "batch_shapes": {k: list(v.shape) for k, v in fixed.items()},
        "first_step_s": first_step_s,
        "step_only_s": step_only,
        "step_only_steps_per_s": 1.0 / step_only,
        "with_input_s": with_input,
        "with_input_steps_per_s": 1.0 / with_input,
    }


def main(argv):
    del argv
    scratch = _WORKDIR.value or tempfile.mkdtemp(prefix="stage2_codes_")
    data_dir = _DATA_DIR.value or os.path.join(scratch, "tfds")
    pipeline.prepare(stage2_config("", data_dir, "").data)
    stage1_dir = make_stage1_run(os.path.join(scratch, "stage1"), data_dir)
    codes_dir = os.path.join(scratch, "codes")

    start = time.perf_counter()
    rt, state, stage1_step = precompute_codes.load_stage1(stage2_config(stage1_dir, data_dir, ""))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    meta = precompute_codes.precompute(rt, state, stage1_step, codes_dir, ("train",),
                                       overwrite=True)
    precompute_s = time.perf_counter() - start
    num_images = meta["splits"]["train"]["num_examples"]

    codes = time_path(stage2_config(stage1_dir, data_dir, codes_dir))
    on_the_fly = time_path(stage2_config(stage1_dir, data_dir, ""))
    config = stage2_config(stage1_dir, data_dir, "")
    result = {
        "benchmark": "stage2_codes",
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "stage1_preset": _STAGE1.value,
        "stage2_preset": "tiny",
        "data": _DATA_NAME.value,
        "image_size": _IMAGE_SIZE.value,
        "vocab_size": meta["vocab_size"],
        "length": meta["length"],
        "global_batch": config.global_batch_size,
        "steps_per_run": _STEPS.value,
        "repeats": _REPEATS.value,
        "precompute": {
            "images": num_images,
            "load_stage1_s": load_s,
            "encode_and_write_s": precompute_s,
            "images_per_s_incl_compile": num_images / precompute_s,
        },
        "precomputed_codes": codes,
        "on_the_fly": on_the_fly,
        "speedup_step_only": on_the_fly["step_only_s"] / codes["step_only_s"],
        "speedup_with_input": on_the_fly["with_input_s"] / codes["with_input_s"],
    }
    emit(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
