"""Top-k / top-p filters against a numpy reference; sampling follows the filtered law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vq3d_jax.nn import token_sampling


def _logits(seed, shape=(5, 40)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 2


def _numpy_top_p_keep(row, p):
    """The smallest set of most-likely tokens with probability mass ≥ p (float64)."""
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    keep, mass = [], 0.0
    for i in order:
        keep.append(i)
        mass += probs[i]
        if mass >= p:
            break
    return set(keep)


@pytest.mark.parametrize("k", [1, 3, 39])
def test_top_k_keeps_exactly_the_k_largest(k):
    logits = _logits(0)
    out = np.asarray(token_sampling.top_k_filter(jnp.asarray(logits), k))
    for row, filtered in zip(logits, out):
        kept = set(np.flatnonzero(np.isfinite(filtered)))
        assert kept == set(np.argsort(-row)[:k])
        np.testing.assert_array_equal(filtered[list(kept)], row[list(kept)])
    np.testing.assert_array_equal(token_sampling.top_k_filter(jnp.asarray(logits), 0), logits)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    logits = _logits(1)
    out = np.asarray(token_sampling.top_p_filter(jnp.asarray(logits), p))
    for row, filtered in zip(logits, out):
        assert set(np.flatnonzero(np.isfinite(filtered))) == _numpy_top_p_keep(
            row.astype(np.float64), p)
    np.testing.assert_array_equal(token_sampling.top_p_filter(jnp.asarray(logits), 1.0), logits)


def test_sampling_is_reproducible_and_follows_the_filtered_distribution():
    logits = jnp.asarray(_logits(2, (1, 8))[0])
    rng = jax.random.key(0)
    draws = jax.jit(lambda key: token_sampling.sample_tokens(
        key, jnp.broadcast_to(logits, (20000, 8)), temperature=0.7, top_k=5, top_p=0.9))
    a, b = np.asarray(draws(rng)), np.asarray(draws(rng))
    np.testing.assert_array_equal(a, b)
    # The law: softmax of logits/0.7 restricted to the top-p set of the top-5.
    scaled = np.asarray(logits, np.float64) / 0.7
    keep = np.argsort(-scaled)[:5]
    keep = [i for i in keep if i in _numpy_top_p_keep(
        np.where(np.isin(np.arange(8), keep), scaled, -np.inf), 0.9)]
    want = np.zeros(8)
    want[keep] = np.exp(scaled[keep] - scaled[keep].max())
    want /= want.sum()
    counts = np.bincount(a, minlength=8) / len(a)
    assert set(np.flatnonzero(counts)) <= set(keep)
    np.testing.assert_allclose(counts, want, atol=0.015)
    greedy = token_sampling.sample_tokens(rng, logits[None], temperature=0.0)
    assert int(greedy[0]) == int(np.argmax(logits))
