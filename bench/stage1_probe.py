r"""Why (or whether) a stage-1 autoencoder learns: a learning probe with instruments.

  python bench/stage1_probe.py --config=configs/vq3d_stage1.py:tiny \
      [--steps=300] [--probe_every=100] [--eval_images=32] [--memorise=0] \
      [--config.key=value ...] [--out=F]

Trains the config's task on one device, no checkpoints, `total_steps` = `--steps` (the
learning-rate schedule spans the probe), and every `--probe_every` steps reports on a
fixed batch:

* reconstruction PSNR against the best input-independent answer, the batch's mean
  image (the floor of a model that ignores its input); with depth, AbsRel and the
  held-out novel-view PSNR;
* per module of the generator (patch embedding, encoder trunk, quantizer projections,
  codebook, decoder trunk, output head, NeRF MLP): the gradient norm of the generator
  loss on the last batch and the norm of the parameter change since the last probe;
* what survives the bottleneck: the mean cosine between different images' code
  vectors at the same token position (1 = every image encodes alike), the codebook's
  usage, the rms of the decoder's input against its sin-cos positions and its
  standard deviation across images, and the PSNR of a ridge-regression probe from
  the decoder's input tokens to their image patches (in-sample);
* the output head's effective rank (exp of the entropy of its normalised singular
  values; Roy & Vetterli 2007) and, for the NeRF decoder, the tri-planes' standard
  deviation across images against their overall one.

`--memorise=N` trains on the first N training scenes, one fixed batch of all N, GANs
off, and probes those same N (the issue-11 memorisation protocol). Otherwise it trains
on the training split as the config says and probes `--eval_images` validation images.
Prints one JSON object per probe and a final one with the whole curve; CPU figures
compare variants' learning, they are not speeds.
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
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench.common import emit  # noqa: E402
from vq3d_jax import losses  # noqa: E402
from vq3d_jax.datasets import pipeline  # noqa: E402
from vq3d_jax.models.vit_vqgan import VitVQGAN, patchify  # noqa: E402
from vq3d_jax.nn.vit import sincos_2d_position_embedding  # noqa: E402
from vq3d_jax.tasks import get_task  # noqa: E402
from vq3d_jax.tasks.common import GENERATOR, images_to_float  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vq3d_stage1.py:tiny")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps.")
_EVERY = flags.DEFINE_integer("probe_every", 100, "Steps between probes.")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 32, "Validation images probed.")
_MEMORISE = flags.DEFINE_integer("memorise", 0, "Train and probe on the first N training "
                                 "scenes, GANs off (0 = train on the split, probe validation).")
_OUT = flags.DEFINE_string("out", "", "Also write the final JSON here.")


def module_of(path) -> str:
    """Generator parameter path → the module name the probe reports it under."""
    keys = [str(getattr(p, "key", p)) for p in path]
    if keys[0] in ("encoder", "decoder"):
        return f"{keys[0]}/{'trunk' if keys[1] == 'transformer' else keys[1]}"
    if keys[0] == "quantizer":
        return f"quantizer/{keys[1]}"
    return keys[0]


def norms_by_module(tree) -> dict[str, float]:
    squares: dict[str, float] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = module_of(path)
        squares[name] = squares.get(name, 0.0) + float(jnp.sum(jnp.square(leaf)))
    return {k: float(f"{np.sqrt(v):.4g}") for k, v in sorted(squares.items())}


def effective_rank(matrix) -> float:
    s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(np.where(p > 0, p, 1.0)))))


def ridge_probe_psnr(features, targets, ridge: float = 1e-3) -> float:
    """PSNR of the in-sample ridge regression features [N, D] → targets [N, P] (range 2)."""
    x = np.concatenate([features, np.ones((len(features), 1))], 1).astype(np.float64)
    y = targets.astype(np.float64)
    w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    return float(10.0 * np.log10(4.0 / np.mean(np.square(x @ w - y))))


def first_batch(data, split: str, count: int, keys) -> dict:
    batch = next(iter(pipeline.create_eval_iterator(
        data, split=split, global_batch_size=count, num_examples=count)))
    return {k: jnp.asarray(batch[k]) for k in keys if k in batch}


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    config.total_steps = _STEPS.value  # the learning-rate schedule spans the probe
    memorise = _MEMORISE.value
    if memorise:
        config.loss.adversarial_start_step = 2**30
        config.global_batch_size = memorise
    pipeline.prepare(config.data)
    task = get_task(config)
    data = config.data.copy_and_resolve_references()
    if memorise:
        probe_batch = first_batch(data, f"train[:{memorise}]", memorise, task.eval_keys)
        fixed = {k: probe_batch[k] for k in task.train_keys}
        batches = iter(lambda: fixed, None)
    else:
        probe_batch = first_batch(data, config.data.eval_split, _EVAL_IMAGES.value,
                                  task.eval_keys)
        train_iter = pipeline.create_train_iterator(
            data, global_batch_size=config.global_batch_size, seed=config.seed)
        batches = ({k: b[k] for k in task.train_keys} for b in train_iter)
    images = images_to_float(probe_batch["image"])
    mean_image = jnp.broadcast_to(jnp.mean(images, axis=0, keepdims=True), images.shape)
    floor = float(jnp.mean(losses.psnr(mean_image, images, max_val=2.0)))

    state = jax.jit(lambda rng: nn.meta.unbox(task.init_state(rng)))(jax.random.key(config.seed))
    train_step = jax.jit(task.train_step)
    eval_step = jax.jit(task.eval_step)

    @jax.jit
    def generator_grads(state, batch):
        d_params = {k: v for k, v in state.params.items() if k != GENERATOR}
        keys = jax.random.split(jax.random.key(1), batch["image"].shape[0])
        loss = lambda g: task.generator_loss(g, d_params, batch, keys, 0.0)[0]  # noqa: E731
        return jax.grad(loss)(state.params[GENERATOR])

    @jax.jit
    def bottleneck(g_params, x):
        """Decoder-input tokens and the unit code vectors of images x."""
        ae = {k: v for k, v in g_params.items() if k in ("encoder", "quantizer", "decoder")}
        return task.autoencoder.apply({"params": ae}, x, method=VitVQGAN.encode)

    planes_fn = jax.jit(lambda g, x: task.planes(g, x)[0]) if hasattr(task, "planes") else None
    p = config.model.patch_size
    patches = np.asarray(patchify(images, p)).reshape(-1, p * p * 3)

    curve, start = [], time.perf_counter()
    previous = state.params[GENERATOR]
    for step in range(1, _STEPS.value + 1):
        batch = next(batches)
        state, metrics = train_step(state, batch)
        if step % _EVERY.value and step != _STEPS.value:
            continue
        g = state.params[GENERATOR]
        evaluated = eval_step(state, probe_batch)
        point = {"step": step, "psnr": float(jnp.mean(evaluated["psnr"])),
                 "train_psnr": float(metrics["train/psnr"]),
                 "learning_rate": float(metrics["train/learning_rate"])}
        for key in ("depth_abs_rel", "novel_psnr_yaw20", "novel_psnr_copy_yaw20",
                    "novel_psnr_warp_yaw20"):
            if key in evaluated:
                point[key] = float(jnp.nanmean(evaluated[key]))
        point["grad_norms"] = norms_by_module(generator_grads(state, batch))
        point["update_norms"] = norms_by_module(jax.tree.map(jnp.subtract, g, previous))
        previous = g
        tokens, aux = bottleneck(g, images)
        codes = np.asarray(aux["latents"])  # [B, T, d] unit vectors
        cosines = np.einsum("btd,ctd->bct", codes, codes)
        point["code_cosine_across_images"] = float(
            cosines[~np.eye(len(codes), dtype=bool)].mean())
        point["codebook_usage"] = float(aux["codebook_usage"])
        grid = int(round(tokens.shape[1] ** 0.5))
        positions = sincos_2d_position_embedding(grid, grid, tokens.shape[-1])
        point["decoder_input_rms"] = float(jnp.sqrt(jnp.mean(jnp.square(tokens))))
        point["decoder_input_std_across_images"] = float(jnp.mean(jnp.std(tokens, axis=0)))
        point["position_rms"] = float(jnp.sqrt(jnp.mean(jnp.square(positions))))
        point["token_probe_psnr"] = ridge_probe_psnr(
            np.asarray(tokens).reshape(-1, tokens.shape[-1]), patches)
        head = next(v for k, v in g["decoder"].items() if k.startswith("to_"))
        point["head_effective_rank"] = effective_rank(head["kernel"])
        if planes_fn is not None:
            planes = planes_fn(g, images)
            point["plane_std_across_images"] = float(jnp.mean(jnp.std(planes, axis=0)))
            point["plane_std"] = float(jnp.std(planes))
        point["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(point), flush=True)
        curve.append(point)

    result = {
        "benchmark": "stage1_probe",
        "device": jax.devices()[0].device_kind,
        "config": f"{config.get('preset', '')} task={config.task} decoder={config.model.decoder}",
        "protocol": (f"memorise the first {memorise} training scenes, GANs off" if memorise
                     else f"train split, probe {_EVAL_IMAGES.value} validation images"),
        "mean_image_psnr": floor,
        "curve": curve,
    }
    emit(result, _OUT.value)


if __name__ == "__main__":
    app.run(main)
