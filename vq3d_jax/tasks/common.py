"""What every task shares: network names in the parameter tree, image conversions,
optimizers and their learning-rate schedules, picture grids and per-pixel map helpers."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Keys of TrainState.params (and opt_state) that name the networks.
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"


def run_config(workdir: str, key: str, hint: str) -> ml_collections.ConfigDict:
    """The config another run was trained with (its workdir's config.json); `key` names
    the setting that points at it, `hint` how to make such a run."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{key}={workdir!r} has no config.json: point it at the --workdir of {hint}.")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def overlay_shared(base, other, where: str = ""):
    """`base` (nested dicts of arrays) with every leaf that `other` has at the same path
    taken from `other`; what only `base` has stays. A shared leaf of another shape is an
    error naming its path."""
    if not isinstance(base, dict):
        if getattr(base, "shape", None) != getattr(other, "shape", None):
            raise ValueError(f"{where or 'the tree'}: shape {getattr(other, 'shape', None)} in "
                             f"the other run, {getattr(base, 'shape', None)} here.")
        return other
    if not isinstance(other, dict):
        raise ValueError(f"{where}: a sub-tree here, a leaf in the other run.")
    return {k: overlay_shared(v, other[k], f"{where}/{k}") if k in other else v
            for k, v in base.items()}


def images_to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] → float32 [−1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def images_to_uint8(images: jax.Array) -> jax.Array:
    return jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def learning_rate_schedule(block, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `block.learning_rate`, then cosine decay to 0 or constant."""
    peak = block.learning_rate
    warmup = optax.linear_schedule(0.0, peak, max(int(block.warmup_steps), 1))
    if block.decay == "cosine":
        after = optax.cosine_decay_schedule(peak, max(total_steps - block.warmup_steps, 1))
    elif block.decay == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"optim decay={block.decay!r}: expected 'cosine' or 'constant'.")
    return optax.join_schedules([warmup, after], [int(block.warmup_steps)])


def make_optimizer(block, total_steps: int, *, decay_mask=None):
    """One network's optimizer from its config block → (transformation, schedule).

    `block`: learning_rate, warmup_steps, decay, b1, b2, weight_decay, grad_clip.
    Global-norm clipping, then Adam, or AdamW (decoupled decay on `decay_mask`'s leaves,
    default all) when weight_decay > 0. `total_steps` counts this optimizer's updates.
    """
    schedule = learning_rate_schedule(block, total_steps)
    if block.weight_decay:
        adam = optax.adamw(schedule, b1=block.b1, b2=block.b2,
                           weight_decay=block.weight_decay, mask=decay_mask)
    else:
        adam = optax.adam(schedule, b1=block.b1, b2=block.b2)
    return optax.chain(optax.clip_by_global_norm(block.grad_clip), adam), schedule


def image_grid(rows: list[jax.Array]) -> jax.Array:
    """Rows of [N, H, W, C] uint8 images → one [rows·H, N·W, C] picture."""
    stacked = jnp.stack(rows)  # [R, N, H, W, C]
    r, n, h, w, c = stacked.shape
    return stacked.transpose(0, 2, 1, 3, 4).reshape(r * h, n * w, c)


def orbit_strip(orbit: jax.Array) -> jax.Array:
    """Orbits [N, T, S, S, C] → one video [T, S, N·S, C] of the N side by side."""
    n, t, h, w, c = orbit.shape
    return orbit.transpose(1, 2, 0, 3, 4).reshape(t, h, n * w, c)


def take_pixels(maps: jax.Array, pixels: jax.Array) -> jax.Array:
    """Maps [B, H, W, ...] at flat pixel indices [B, N] → [B, N, ...]."""
    flat = maps.reshape((maps.shape[0], -1) + maps.shape[3:])
    index = pixels.reshape(pixels.shape + (1,) * (flat.ndim - 2))
    return jnp.take_along_axis(flat, index, axis=1)


def resize_maps(maps: jax.Array, size: int) -> jax.Array:
    """[B, H, W, ...] → [B, size, size, ...]: bilinear, area-averaging when shrinking."""
    if maps.shape[1] == size and maps.shape[2] == size:
        return maps
    shape = (maps.shape[0], size, size) + maps.shape[3:]
    return jax.image.resize(maps, shape, "linear", antialias=True)
