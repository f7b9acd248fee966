"""What every task shares: network names in the parameter tree, image conversions, the
learning-rate schedule and picture grids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Keys of TrainState.params (and opt_state) that name the networks.
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"


def images_to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] → float32 [−1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def images_to_uint8(images: jax.Array) -> jax.Array:
    return jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def learning_rate_schedule(optim, peak: float, total_steps: int) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, peak, max(int(optim.warmup_steps), 1))
    if optim.decay == "cosine":
        after = optax.cosine_decay_schedule(peak, max(total_steps - optim.warmup_steps, 1))
    elif optim.decay == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"optim.decay={optim.decay!r}: expected 'cosine' or 'constant'.")
    return optax.join_schedules([warmup, after], [int(optim.warmup_steps)])


def image_grid(rows: list[jax.Array]) -> jax.Array:
    """Rows of [N, H, W, C] uint8 images → one [rows·H, N·W, C] picture."""
    stacked = jnp.stack(rows)  # [R, N, H, W, C]
    r, n, h, w, c = stacked.shape
    return stacked.transpose(0, 2, 1, 3, 4).reshape(r * h, n * w, c)
