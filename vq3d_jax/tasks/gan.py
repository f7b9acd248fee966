"""The GAN kit every adversarial task composes: discriminator updates, their gate, and an
EMA of the generator's weights.

- `Discriminator`: one discriminator's network, optimizer and R1 settings, with the
  generator's non-saturating loss against it and its own gradients and update
  (non-saturating logistic loss + lazy R1, StyleGAN2 §B), all skipped (`lax.cond`)
  before the GANs start: parameters, optimizer state and its step count wait.
- `ema_decay` / `update_ema`: StyleGAN2's generator EMA with ramp-up (Karras et al.
  2020, arXiv 1912.04958, §B; the half-life in images, shortened early in training).
- `inference_generator`: the weights a task evaluates and samples with (the EMA when
  the run keeps one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vq3d_jax import losses
from vq3d_jax.tasks.common import DISCRIMINATOR, GENERATOR

# Key of TrainState.model_state holding the generator's EMA weights, when kept.
GENERATOR_EMA = "generator_ema"


def run_when(active: jax.Array, work: Callable[[], Any], idle: Callable[[], Any]):
    """`work()` when `active` > 0, else `idle()`; XLA runs only the branch taken."""
    return jax.lax.cond(active > 0, work, idle)


@dataclasses.dataclass(frozen=True)
class Discriminator:
    """One discriminator of a task: its parameter key, network, optimizer and R1 schedule.

    `name` keys its parameters and optimizer state in the TrainState; its metrics are
    prefixed by it, less the word "discriminator" (`loss/d`, `loss/novel_d`, ...).
    """

    name: str
    network: nn.Module
    tx: optax.GradientTransformation
    r1_gamma: float
    r1_every: int

    @property
    def prefix(self) -> str:
        return "" if self.name == DISCRIMINATOR else self.name.removesuffix(DISCRIMINATOR)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The names of `gradients`' metrics, in the order it computes them."""
        p = self.prefix
        return f"loss/{p}d", f"loss/{p}r1", f"gan/{p}real_logit", f"gan/{p}fake_logit"

    def logits(self, params, images: jax.Array, condition=None) -> jax.Array:
        if condition is None:  # an unconditional network takes images alone
            return self.network.apply({"params": params}, images)
        return self.network.apply({"params": params}, images, condition)

    def generator_loss(self, params, fakes: jax.Array, active: jax.Array,
                       condition=None) -> jax.Array:
        """The generator's non-saturating loss on `fakes`; 0, and no D pass, while inactive."""
        return run_when(
            active,
            lambda: losses.nonsaturating_generator_loss(self.logits(params, fakes, condition)),
            lambda: jnp.zeros((), jnp.float32),
        )

    def gated_gradients(self, params, reals, fakes, step, active):
        """`gradients` while `active`; before the GANs start the D is not run: zero
        gradients and metrics (built from `params`' shapes: tracing `gradients` a second
        time for its output shapes cost a third of a stage-1 step's trace)."""
        return run_when(
            active,
            lambda: self.gradients(params, reals, fakes, step),
            lambda: (jax.tree.map(jnp.zeros_like, params),
                     dict.fromkeys(self.metric_names, jnp.zeros((), jnp.float32))),
        )

    def gated_apply(self, grads, opt_state, params, active):
        """One optimizer step while `active`; before, parameters and optimizer state
        (its step count too) come back as they were."""
        return run_when(active, lambda: apply_gradients(self.tx, grads, opt_state, params),
                        lambda: (params, opt_state))

    def gradients(self, params, reals, fakes, step, real_condition=None, fake_condition=None):
        """∇ of the non-saturating D loss + lazy R1 (w.r.t. the real images) → (grads,
        metrics)."""
        fakes = jax.lax.stop_gradient(fakes)
        r1_due = (step % self.r1_every == 0).astype(jnp.float32)

        def loss_fn(d_params):
            real_logits = self.logits(d_params, reals, real_condition)
            fake_logits = self.logits(d_params, fakes, fake_condition)
            d_loss = losses.nonsaturating_discriminator_loss(real_logits, fake_logits)
            # Lazy R1 (StyleGAN2 §B): every r1_every steps, scaled by the interval.
            r1 = jax.lax.cond(
                r1_due > 0,
                lambda: losses.r1_penalty(
                    lambda x: self.logits(d_params, x, real_condition), reals),
                lambda: jnp.zeros((), jnp.float32),
            )
            total = d_loss + r1_due * 0.5 * self.r1_gamma * self.r1_every * r1
            # float32, as the idle branch of `gated_gradients` builds them.
            return total, {name: value.astype(jnp.float32) for name, value in zip(
                self.metric_names, (d_loss, r1, jnp.mean(real_logits), jnp.mean(fake_logits)))}

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics


def apply_gradients(tx: optax.GradientTransformation, grads, opt_state, params):
    """One optimizer step → (new params, new optimizer state)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def ema_decay(step: jax.Array, batch_size: int, half_life_images: float,
              rampup: float) -> jax.Array:
    """β of StyleGAN2's generator EMA at `step` (StyleGAN2-ADA's training loop).

    β = 0.5^(batch / h): the EMA forgets half of a weight's past in `h` images, with
    h = min(half_life_images, images seen · rampup) when `rampup` > 0 (a short memory
    early, when the weights move fast). At step 0 β = 0: the EMA starts as the weights.
    """
    half_life = jnp.asarray(half_life_images, jnp.float32)
    if rampup > 0:
        seen = step.astype(jnp.float32) * batch_size
        half_life = jnp.minimum(half_life, seen * rampup)
    return 0.5 ** (batch_size / jnp.maximum(half_life, 1e-8))


def update_ema(ema, params, beta: jax.Array):
    """ema ← params + β·(ema − params), leaf by leaf."""
    return jax.tree.map(lambda e, p: p + beta * (e - p), ema, params)


def inference_generator(state) -> Any:
    """The generator weights to evaluate and sample with: the EMA when the run keeps one."""
    model_state = state.model_state or {}
    return model_state[GENERATOR_EMA] if GENERATOR_EMA in model_state else state.params[GENERATOR]
