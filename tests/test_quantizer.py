"""Factorised ℓ2 quantizer against brute-force float64 references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vq3d_jax.nn.quantizer import FactorizedQuantizer, straight_through, vq_loss

K, D, WIDTH = 16, 4, 8


@pytest.fixture(scope="module")
def quantized():
    """One model, one batch, one compile of init/forward/loss-gradient/lookup."""
    model = FactorizedQuantizer(codebook_size=K, code_dim=D, width=WIDTH, beta=0.25)
    x = jax.random.normal(jax.random.key(1), (3, 7, 12))
    # The rbg PRNG compiles much faster than threefry on CPU (init only).
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0, impl="rbg"), x))

    @jax.jit
    def run(params):
        q, aux = model.apply(params, x)
        grads = jax.grad(lambda p: model.apply(p, x)[1]["vq_loss"])(params)
        looked_up = model.apply(params, aux["codes"], method=FactorizedQuantizer.lookup)
        return q, aux, grads, looked_up

    return model, x, params, run(params)


def test_nearest_code_matches_float64_bruteforce(quantized):
    _, x, params, (_, aux, _, _) = quantized
    p = params["params"]
    z = np.asarray(x, np.float64) @ np.asarray(p["in_proj"]["kernel"], np.float64)
    z = z + np.asarray(p["in_proj"]["bias"], np.float64)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    e = np.asarray(p["codebook"], np.float64)
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    dist = np.sum((z[..., None, :] - e) ** 2, axis=-1)  # [3, 7, K] Euclidean on unit vectors
    codes = np.asarray(aux["codes"])
    assert codes.dtype == np.int32 and codes.shape == (3, 7)
    assert codes.min() >= 0 and codes.max() < K
    np.testing.assert_array_equal(codes, dist.argmin(-1))


def test_lookup_reproduces_forward(quantized):
    _, _, _, (q, _, _, looked_up) = quantized
    assert q.shape == (3, 7, WIDTH)
    np.testing.assert_allclose(np.asarray(looked_up), np.asarray(q), atol=1e-5)


def test_statistics_match_numpy(quantized):
    _, _, _, (_, aux, _, _) = quantized
    codes = np.asarray(aux["codes"]).ravel()
    counts = np.bincount(codes, minlength=K).astype(np.float64)
    probs = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(float(aux["perplexity"]), np.exp(-np.sum(probs * np.log(probs))),
                               rtol=1e-5)
    assert float(aux["codebook_usage"]) == pytest.approx(len(np.unique(codes)) / K)
    assert aux["vq_loss"].dtype == jnp.float32 and aux["vq_loss"].shape == ()


def test_codebook_gradient_only_on_used_codes(quantized):
    _, _, _, (_, aux, grads, _) = quantized
    g = np.asarray(grads["params"]["codebook"])
    used = np.zeros(K, bool)
    used[np.asarray(aux["codes"]).ravel()] = True
    row_norm = np.linalg.norm(g, axis=-1)
    assert np.all(row_norm[used] > 0)
    np.testing.assert_array_equal(row_norm[~used], 0.0)
    # The encoder side also gets the commitment gradient.
    assert np.abs(np.asarray(grads["params"]["in_proj"]["kernel"])).sum() > 0


def test_straight_through_and_vq_loss_gradients():
    kz, kq, kg = jax.random.split(jax.random.key(2), 3)
    z, z_q, g = (jax.random.normal(k, (5, 3)) for k in (kz, kq, kg))
    np.testing.assert_allclose(straight_through(z, z_q), z_q, atol=1e-6)
    dz, dzq = jax.grad(lambda a, b: jnp.sum(straight_through(a, b) * g), argnums=(0, 1))(z, z_q)
    np.testing.assert_allclose(dz, g, atol=1e-6)  # identity to z
    np.testing.assert_array_equal(dzq, 0.0)  # nothing to the code along this path
    beta, n = 0.25, z.size
    dz, dzq = jax.grad(lambda a, b: vq_loss(a, b, beta), argnums=(0, 1))(z, z_q)
    np.testing.assert_allclose(dz, beta * 2 * (z - z_q) / n, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dzq, 2 * (z_q - z) / n, rtol=1e-5, atol=1e-7)


def test_restart_moves_only_dead_codes_onto_latents():
    from vq3d_jax.nn.quantizer import code_counts, restart_dead_codes

    rng = np.random.default_rng(3)
    codebook = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    latents = jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32)
    codes = jnp.asarray([[0, 0, 1, 1, 1], [0, 1, 1, 0, 2]])
    counts = code_counts(codes, 6)
    np.testing.assert_array_equal(counts, [4, 5, 1, 0, 0, 0])
    usage = jnp.asarray([1.0, 1.0, 0.0, 0.0, 0.5, 0.0])
    new_codebook, new_usage, restarted = restart_dead_codes(
        codebook, usage, counts, latents, jax.random.PRNGKey(0), decay=0.5, threshold=0.2
    )
    # EMA: 0.5·usage + 0.5·counts → [2.5, 3, 0.5, 0, 0.25, 0]; dead = {3, 5}.
    assert float(restarted) == 2
    alive = [0, 1, 2, 4]
    np.testing.assert_array_equal(new_codebook[np.array(alive)], codebook[np.array(alive)])
    flat = np.asarray(latents).reshape(-1, 4)
    for k in (3, 5):
        assert np.any(np.all(np.isclose(flat, np.asarray(new_codebook[k])), axis=1)), k
    np.testing.assert_allclose(new_usage, [2.5, 3.0, 0.5, 0.4, 0.25, 0.4])
