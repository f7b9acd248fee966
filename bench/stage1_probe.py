r"""How quickly an autoencoder's output starts to depend on its input (a learning probe).

  python bench/stage1_probe.py --config=configs/vq3d_stage1.py:tiny \
      [--steps=300] [--probe_every=100] [--eval_images=32] [--config.key=value] [--out=F]

Trains the config's task (one device, no checkpoints, `total_steps` = `--steps` so
the learning-rate schedule spans the run) on its training split and,
every `--probe_every` steps, reports on a fixed batch of validation images:
reconstruction PSNR; the PSNR of the best input-independent answer, the batch's
mean image (the floor a model that ignores its input reaches); and, for the NeRF
decoder, the tri-planes' standard deviation across images against their overall
standard deviation (how much of the planes encodes the image rather than a mean
scene). `--config.model.decoder=vit2d` gives the 2D decoder's curve to compare.

Prints one JSON object per probe and a final one with the whole curve. CPU
figures are learning-speed comparisons between variants, not speeds.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench.common import emit  # noqa: E402
from vq3d_jax import input_pipeline, losses  # noqa: E402
from vq3d_jax.datasets import synthetic_scenes  # noqa: E402
from vq3d_jax.tasks import get_task  # noqa: E402
from vq3d_jax.tasks.vit_vqgan import GENERATOR, images_to_float  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vq3d_stage1.py:tiny")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps.")
_EVERY = flags.DEFINE_integer("probe_every", 100, "Steps between probes.")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 32, "Validation images probed.")
_OUT = flags.DEFINE_string("out", "", "Also write the final JSON here.")


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    config.total_steps = _STEPS.value  # the learning-rate schedule spans the probe
    synthetic_scenes.ensure_built(config.data.name, config.data.data_dir or None)
    task = get_task(config)
    data = config.data.copy_and_resolve_references()
    data.with_novel_views = False
    train_iter = input_pipeline.create_train_iterator(
        data, global_batch_size=config.global_batch_size, seed=config.seed
    )
    eval_batch = next(iter(input_pipeline.create_eval_iterator(
        data, split=config.data.eval_split, global_batch_size=_EVAL_IMAGES.value,
        num_examples=_EVAL_IMAGES.value,
    )))
    eval_batch = {k: eval_batch[k] for k in task.eval_keys if k in eval_batch}
    images = images_to_float(jnp.asarray(eval_batch["image"]))
    mean_image = jnp.broadcast_to(jnp.mean(images, axis=0, keepdims=True), images.shape)
    floor = float(jnp.mean(losses.psnr(mean_image, images, max_val=2.0)))

    state = jax.jit(lambda rng: nn.meta.unbox(task.init_state(rng)))(jax.random.key(config.seed))
    train_step = jax.jit(task.train_step, donate_argnums=0)
    eval_step = jax.jit(task.eval_step)
    planes_fn = jax.jit(lambda s, x: task.planes(s.params[GENERATOR], x)[0]) if hasattr(
        task, "planes") else None

    curve, start = [], time.perf_counter()
    for step in range(1, _STEPS.value + 1):
        batch = next(train_iter)
        state, metrics = train_step(state, {k: batch[k] for k in task.train_keys})
        if step % _EVERY.value and step != _STEPS.value:
            continue
        evaluated = eval_step(state, eval_batch)
        point = {
            "step": step,
            "psnr": float(jnp.mean(evaluated["psnr"])),
            "train_psnr": float(metrics["train/psnr"]),
            "codebook_usage": float(metrics["vq/codebook_usage"]),
            "seconds": round(time.perf_counter() - start, 1),
        }
        if "depth_abs_rel" in evaluated:
            point["depth_abs_rel"] = float(jnp.mean(evaluated["depth_abs_rel"]))
        if planes_fn is not None:
            planes = planes_fn(state, images)
            point["plane_std_across_images"] = float(jnp.mean(jnp.std(planes, axis=0)))
            point["plane_std"] = float(jnp.std(planes))
        print(json.dumps(point), flush=True)
        curve.append(point)

    result = {
        "benchmark": "stage1_probe",
        "device": jax.devices()[0].device_kind,
        "config": f"{config.get('preset', '')} task={config.task} decoder={config.model.decoder}",
        "eval_images": _EVAL_IMAGES.value,
        "mean_image_psnr": floor,
        "curve": curve,
    }
    emit(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
