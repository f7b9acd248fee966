"""Gradient accumulation: k micro-batches make the update of the whole batch."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_params_close_up_to_adam_noise, override

from configs import vq3d_stage2
from vq3d_jax.tasks import get_task
from vq3d_jax.train import accumulation, loop, sharding


def test_microbatch_means_and_order_are_the_whole_batch():
    """A linear model's loss gradient, a mean and per-example outputs over 4 micro-batches
    equal those of the whole batch (closed form); micro-batch j holds rows j, j+4, ..."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.standard_normal((12,)).astype(np.float32)
    w = jnp.asarray([0.5, -1.0, 2.0])

    def fn(inputs):
        x, y, index = inputs
        loss, grads = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        # Each example's micro-batch, named by its first example.
        return grads, {"loss": loss}, {"residual": x @ w - y, "micro": index * 0 + index[0]}

    whole = fn((x, y, jnp.arange(12)))
    micro = accumulation.mean_over_microbatches(fn, (x, y, jnp.arange(12)), 4)
    residual = x @ np.asarray(w) - y
    np.testing.assert_allclose(whole[0], 2.0 * x.T @ residual / 12, rtol=1e-5)
    np.testing.assert_allclose(micro[0], whole[0], rtol=1e-5)
    np.testing.assert_allclose(micro[1]["loss"], np.mean(residual**2), rtol=1e-5)
    np.testing.assert_allclose(micro[2]["residual"], residual, rtol=1e-5)
    np.testing.assert_array_equal(micro[2]["micro"], np.arange(12) % 4)


def test_stage2_accumulated_step_equals_the_large_batch_step():
    """Two prior steps on 8 sequences, whole and as 4 micro-batches of 2: equal
    metrics and parameters (class dropout 0.5: per-example draws, the same either way)."""
    rng = np.random.default_rng(0)
    batch = {"codes": rng.integers(0, 64, (8, 16)).astype(np.int32),
             "label": rng.integers(0, 4, (8,)).astype(np.int32)}
    results = []
    for steps in (1, 4):
        config = override(vq3d_stage2.get_config("tiny"), {
            "prior.vocab_size": 64, "prior.length": 16, "data.codes_dir": "unused",
            "global_batch_size": 8, "optim.warmup_steps": 1, "prior.class_dropout": 0.5,
            "grad_accum_steps": steps})
        rt = loop.build_runtime(get_task(config), config, devices=jax.devices()[:1])
        state = loop.init_state(rt)
        step = loop.compile_train_step(rt)
        with rt.scope():
            for _ in range(2):  # the second step moves params by a non-zero learning rate
                state, metrics = step(state, sharding.global_batch(batch, rt.mesh))
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (params_1, metrics_1), (params_4, metrics_4) = results
    for key in ("loss/ce", "train/grad_norm", "train/accuracy"):
        np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-5, atol=1e-6)
    # Learning rate: 1 warm-up step to the peak, 2 steps taken.
    assert_params_close_up_to_adam_noise(params_4, params_1, 2 * 1e-3, max_fraction_off=1e-3)
