"""The GAN kit (tasks/gan.py): the discriminator gate and the generator EMA."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from conftest import random_batch, tiny_task_config

from vq3d_jax.tasks import gan, get_task


def _stylegan2_ada_beta(step, batch, half_life, rampup):
    """StyleGAN2-ADA training_loop.py's G_ema update, in float64."""
    ema_nimg = half_life
    if rampup:
        ema_nimg = min(ema_nimg, step * batch * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


def test_ema_decay_has_the_half_life_and_ramp_up_of_stylegan2():
    for step, rampup in [(0, 0.05), (3, 0.05), (400, 0.05), (10, 0.0), (7, 0.5)]:
        got = float(gan.ema_decay(jnp.asarray(step), 32, 10_000.0, rampup))
        np.testing.assert_allclose(got, _stylegan2_ada_beta(step, 32, 10_000.0, rampup),
                                   rtol=1e-6)
    # Without ramp-up, h / batch steps of β halve what the EMA remembers.
    beta = float(gan.ema_decay(jnp.asarray(5), 8, 80.0, 0.0))
    np.testing.assert_allclose(beta ** (80 / 8), 0.5, rtol=1e-6)
    assert float(gan.ema_decay(jnp.asarray(0), 8, 80.0, 0.05)) == 0.0  # EMA starts as the weights


def test_discriminator_waits_and_the_generator_ema_follows_the_weights():
    """Before `loss.adversarial_start_step` no discriminator is run: its parameters and
    optimizer state (its step count included) stay as initialised; from that step on it
    trains, its optimizer counting from its own first update. The EMA kept in model_state
    follows the generator's weights by StyleGAN2's recurrence, and eval uses it."""
    config = tiny_task_config()
    config.loss.adversarial_start_step = 2
    config.ema.update(half_life_images=40, rampup=0.25)
    task = get_task(config)
    state = jax.jit(lambda rng: nn.meta.unbox(task.init_state(rng)))(jax.random.key(0))
    step = jax.jit(task.train_step)
    batch = {"image": jnp.asarray(random_batch()["image"])}
    initial = jax.device_get((state.params["discriminator"], state.opt_state["discriminator"]))

    def leaf(tree):  # one generator weight, followed through the steps
        return np.asarray(tree["decoder"]["to_pixels"]["kernel"], np.float64)

    expected_ema = leaf(state.model_state[gan.GENERATOR_EMA])
    np.testing.assert_array_equal(expected_ema, leaf(state.params["generator"]))
    for i in range(4):
        state, metrics = step(state, batch)
        assert (float(metrics["loss/d"]) > 0.0) == (i >= 2)
        if i == 1:
            waited = jax.device_get((state.params["discriminator"],
                                     state.opt_state["discriminator"]))
            jax.tree.map(np.testing.assert_array_equal, waited, initial)
        beta = _stylegan2_ada_beta(i, 8, 40.0, 0.25)
        expected_ema = leaf(state.params["generator"]) + beta * (
            expected_ema - leaf(state.params["generator"]))
        np.testing.assert_allclose(leaf(state.model_state[gan.GENERATOR_EMA]), expected_ema,
                                   rtol=1e-5, atol=1e-7)
    assert gan.inference_generator(state) is state.model_state[gan.GENERATOR_EMA]
    # Adam's first update is at warm-up LR 0, its second is not.
    moved = jax.device_get(state.params["discriminator"])
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved),
                                                        jax.tree.leaves(initial[0])))
    counts = [c for c in jax.tree.leaves(state.opt_state["discriminator"])
              if np.ndim(c) == 0 and np.issubdtype(np.asarray(c).dtype, np.integer)]
    assert counts and all(int(c) == 2 for c in counts)
