"""Gradient accumulation: k micro-batches make the update of the whole batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override, steps_per_layout, with_a_wrong_row
from float_bounds import assert_close_up_to_rounding, assert_same_steps

from configs import vq3d_stage2
from vq3d_jax.train import accumulation


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
    """Two prior steps on 8 sequences, whole and as 4 micro-batches of 2: equal metrics,
    gradients and weights up to float rounding (tests/float_bounds.py); with one wrong
    row, not (class dropout 0.5: per-example draws, the same either way)."""
    rng = np.random.default_rng(0)
    batch = {"codes": rng.integers(0, 64, (8, 16)).astype(np.int32),
             "label": rng.integers(0, 4, (8,)).astype(np.int32)}

    def config():
        return override(vq3d_stage2.get_config("tiny"), {
            "prior.vocab_size": 64, "prior.length": 16, "data.codes_dir": "unused",
            "global_batch_size": 8, "optim.warmup_steps": 1, "prior.class_dropout": 0.5})

    one_device = dict(data=1, fsdp=1, tensor=1)
    (state_1, metrics_1), (state_4, metrics_4), (wrong_4, _) = steps_per_layout(
        config, [(jax.devices()[:1], one_device, 1), (jax.devices()[:1], one_device, 4)],
        batch, steps=2, corrupted=with_a_wrong_row(batch))
    assert_close_up_to_rounding(metrics_4, metrics_1,
                                keys=("loss/ce", "train/grad_norm", "train/accuracy"))
    assert_same_steps(state_4, state_1, config(), steps=2)
    with pytest.raises(AssertionError, match="beyond float rounding"):
        assert_same_steps(wrong_4, state_1, config(), steps=2)
