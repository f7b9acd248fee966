"""FID/KID/IS maths against closed forms and float64 references."""

import numpy as np
import pytest
import scipy.linalg

from vq3d_jax.metrics import fid


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _reference_fid(mu1, s1, mu2, s2):
    # pytorch-fid's route, independent of the library's eigenvalues: the principal square
    # root of the non-symmetric Σ₁Σ₂ by a Schur decomposition.
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_equal_covariances_is_squared_mean_distance():
    rng = np.random.default_rng(0)
    sigma = _random_spd(rng, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    assert fid.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(
        np.sum((mu1 - mu2) ** 2), rel=1e-6, abs=1e-8)


def test_frechet_diagonal_closed_form_and_reference():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.5, 2.0, 8), rng.uniform(0.5, 2.0, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-9)
    s1, s2 = _random_spd(rng, 32), _random_spd(rng, 32)
    assert fid.frechet_distance(mu1[:1].repeat(32), s1, mu2[:1].repeat(32), s2) == pytest.approx(
        _reference_fid(mu1[:1].repeat(32), s1, mu2[:1].repeat(32), s2), rel=1e-7)


def test_identical_sets_give_zero_and_singular_covariances_stay_finite():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 32))  # fewer rows than dimensions: Σ is singular
    stats = fid.StreamingStats(32)
    stats.update(x)
    mu, sigma = stats.mean_cov()
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-4
    y = rng.normal(size=(10, 32)) + 1.0
    other = fid.StreamingStats(32)
    other.update(y)
    value = fid.frechet_distance(mu, sigma, *other.mean_cov())
    assert np.isfinite(value) and value > 0


def test_streaming_uneven_masked_batches_equal_one_shot():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(103, 12)).astype(np.float32) * 3 + 5
    stats = fid.StreamingStats(12, keep=50, chunk=16)
    start = 0
    for size in (1, 7, 30, 2, 63):
        batch = x[start:start + size]
        pad = np.full((5, 12), 1e6, np.float32)  # padding rows that must not count
        stats.update(np.concatenate([batch, pad]), np.r_[np.ones(size, bool), np.zeros(5, bool)])
        start += size
    mu, cov = stats.mean_cov()
    assert stats.n == 103
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    reference = np.cov(x.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(cov, reference, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(stats.features(), x[:50])


def test_streaming_rejects_bad_rows():
    stats = fid.StreamingStats(4)
    with pytest.raises(ValueError, match="non-finite"):
        stats.update(np.array([[0.0, np.nan, 0, 0]]))
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_cov()


def test_kid_equals_brute_force_unbiased_mmd():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)) + 0.5

    def k(a, b):
        return (a @ b / 5 + 1.0) ** 3

    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = fid.kernel_inception_distance(x, y, num_subsets=3, subset_size=6)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


def test_kid_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(5)
    same = fid.kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)),
                                         num_subsets=20, subset_size=200)[0]
    shifted = fid.kernel_inception_distance(rng.normal(size=(400, 8)),
                                            rng.normal(size=(400, 8)) + 1.0,
                                            num_subsets=20, subset_size=200)[0]
    assert abs(same) < 0.05 * shifted


def test_inception_score_closed_forms():
    # Confident and evenly spread over 10 classes → IS = 10; uninformative → IS = 1.
    logits = np.full((100, 10), -1e4)
    logits[np.arange(100), np.arange(100) % 10] = 0.0
    assert fid.inception_score(logits, splits=2)[0] == pytest.approx(10.0, rel=1e-6)
    assert fid.inception_score(np.zeros((40, 10)), splits=4) == pytest.approx((1.0, 0.0))

