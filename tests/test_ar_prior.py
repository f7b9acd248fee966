"""The stage-2 prior: cached decoding equals the full forward pass, causality, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vq3d_jax.models import ar_prior

VOCAB, CLASSES, LENGTH = 32, 4, 12


def _model(**kwargs):
    dims = dict(ar_prior.preset_dims("tiny"), depth=2, width=32, num_heads=4, mlp_dim=64)
    return ar_prior.build(dims, vocab_size=VOCAB, num_classes=CLASSES, length=LENGTH,
                          dtype=jnp.float32, **kwargs)


@pytest.fixture(scope="module")
def prior():
    model = _model()
    rng = np.random.default_rng(0)
    codes = jnp.asarray(rng.integers(0, VOCAB, (3, LENGTH)), jnp.int32)
    labels = jnp.asarray([0, 3, CLASSES], jnp.int32)  # the last row: the null class
    params = model.init(jax.random.key(0, impl="rbg"), codes, labels)["params"]
    # The init draws small weights; scale them so the logits vary with the inputs
    # well above float32 rounding.
    params = jax.tree.map(lambda p: p * 3.0, params)
    return model, params, codes, labels


def test_cached_decoding_matches_the_full_forward_pass_at_every_position(prior):
    model, params, codes, labels = prior
    full = model.apply({"params": params}, codes, labels)

    @jax.jit
    def decode_all(params, codes, labels):
        def step(cache, t):
            previous = codes[:, jnp.maximum(t - 1, 0)]
            logits, cache = model.apply({"params": params}, previous, labels, t, cache,
                                        method=ar_prior.ARPrior.decode_step)
            return cache, logits

        cache = ar_prior.init_cache(model, codes.shape[0], LENGTH)
        return jax.lax.scan(step, cache, jnp.arange(LENGTH))[1].swapaxes(0, 1)

    cached = decode_all(params, codes, labels)
    assert float(jnp.std(full)) > 0.5
    # float32 rounding of sums in another order: ~1e-5 of logits whose spread is ~1.
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=1e-4)


def test_a_future_code_never_changes_an_earlier_position(prior):
    model, params, codes, labels = prior
    base = model.apply({"params": params}, codes, labels)
    for t in (0, 5, LENGTH - 1):
        changed = codes.at[:, t].set((codes[:, t] + 1) % VOCAB)
        out = model.apply({"params": params}, changed, labels)
        # Logits at positions ≤ t predict c_0..c_t from c_<t: unchanged. Position t+1
        # is the first to read c_t, and it must notice.
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        if t + 1 < LENGTH:
            assert float(jnp.max(jnp.abs(out[:, t + 1] - base[:, t + 1]))) > 1e-3


def test_the_class_token_conditions_every_position(prior):
    model, params, codes, labels = prior
    other = model.apply({"params": params}, codes, (labels + 1) % (CLASSES + 1))
    base = model.apply({"params": params}, codes, labels)
    assert float(jnp.min(jnp.max(jnp.abs(other - base), axis=-1))) > 1e-3


def test_greedy_sampling_follows_the_argmax_of_the_full_forward_pass(prior):
    """Temperature 0 and any segmentation of the cache: each code is the argmax given the rest."""
    model, params, _, labels = prior
    keys = jax.random.split(jax.random.key(1), labels.shape[0])
    for segments in (1, 5):
        options = ar_prior.SamplingOptions(temperature=0.0, cache_segments=segments)
        codes = jax.jit(lambda p, lab, k, o=options: ar_prior.sample_codes(
            model, p, lab, k, o))(params, labels, keys)
        logits = model.apply({"params": params}, codes, labels)
        np.testing.assert_array_equal(codes, jnp.argmax(logits, axis=-1))


def test_sampling_is_reproducible_per_example(prior):
    """Same key → same codes; an example's codes do not depend on its batch-mates."""
    model, params, _, labels = prior
    keys = jax.random.split(jax.random.key(2), labels.shape[0])
    options = ar_prior.SamplingOptions(temperature=1.0, top_k=8, cache_segments=3)
    draw = jax.jit(lambda p, lab, k: ar_prior.sample_codes(model, p, lab, k, options))
    first = draw(params, labels, keys)
    np.testing.assert_array_equal(first, draw(params, labels, keys))
    alone = draw(params, labels[1:2], keys[1:2])
    np.testing.assert_array_equal(alone[0], first[1])
    assert len({tuple(np.asarray(row)) for row in first}) == labels.shape[0]


def test_guidance_scale_one_is_the_conditional_model_and_zero_the_null_model(prior):
    model, params, _, labels = prior
    keys = jax.random.split(jax.random.key(3), labels.shape[0])

    def greedy(scale, lab):
        options = ar_prior.SamplingOptions(temperature=0.0, guidance_scale=scale)
        return ar_prior.sample_codes(model, params, lab, keys, options)

    plain = greedy(1.0, labels)
    np.testing.assert_array_equal(greedy(1.0 + 1e-7, labels), plain)
    null = jnp.full_like(labels, CLASSES)
    np.testing.assert_array_equal(greedy(0.0, labels), greedy(1.0, null))


def test_segment_ends_cover_the_sequence():
    assert ar_prior.segment_ends(1024, 8) == [128 * (s + 1) for s in range(8)]
    assert ar_prior.segment_ends(10, 4) == [3, 5, 8, 10]
    assert ar_prior.segment_ends(3, 10) == [1, 2, 3]
    assert ar_prior.segment_ends(16, 1) == [16]


def test_analytic_flops_match_a_hand_count():
    dims = {"depth": 1, "width": 4, "num_heads": 1, "mlp_dim": 8}
    # 2·(4·16 + 2·32) = 256 per token, attention 2·L·D = 2·3·4 = 24, head 2·4·5 = 40.
    assert ar_prior.analytic_flops_per_sequence(dims, 3, 5) == 3 * (256 + 24 + 40)
