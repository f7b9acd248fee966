"""Sliced Wasserstein distance against a slow float64 reference (ProGAN §5's recipe)."""

import numpy as np
import pytest
from scipy import ndimage

from vq3d_jax.metrics import swd

KERNEL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def _reference_swd(real, fake, seed, nhoods, repeats, dirs):
    """scipy 'mirror' convolutions, per-patch loops and numpy sorts, drawing the random
    patches and directions in the documented order."""
    def pyramid(x, levels):
        x = x.astype(np.float64)
        out = []
        conv = lambda a, k: np.stack([  # noqa: E731
            np.stack([ndimage.convolve(a[n, ..., c], k, mode="mirror") for c in range(3)], -1)
            for n in range(a.shape[0])])
        for _ in range(levels - 1):
            small = conv(x, KERNEL)[:, ::2, ::2]
            up = np.zeros_like(x)
            up[:, ::2, ::2] = small
            out.append(x - conv(up, KERNEL * 4.0))
            x = small
        return out + [x]

    rng = np.random.default_rng(seed)
    size = real.shape[1]
    levels = int(np.log2(size // 16)) + 1
    scores = {}
    for level, (a, b) in enumerate(zip(pyramid(real, levels), pyramid(fake, levels))):
        descs = []
        n, h, w, _ = a.shape
        rows = rng.integers(0, h - 6, (n, nhoods))
        cols = rng.integers(0, w - 6, (n, nhoods))
        for x in (a, b):
            patches = [x[i, rows[i, j]:rows[i, j] + 7, cols[i, j]:cols[i, j] + 7]
                       for i in range(n) for j in range(nhoods)]
            d = np.stack(patches)
            d = (d - d.mean(axis=(0, 1, 2))) / d.std(axis=(0, 1, 2))
            descs.append(d.reshape(len(d), -1))
        results = []
        for _ in range(repeats):
            directions = rng.standard_normal((descs[0].shape[1], dirs))
            directions /= np.linalg.norm(directions, axis=0, keepdims=True)
            pa = np.sort(descs[0] @ directions, axis=0)
            pb = np.sort(descs[1] @ directions, axis=0)
            results.append(np.mean(np.abs(pa - pb)))
        scores[f"swd_{size >> level}"] = 1e3 * np.mean(results)
    scores["swd_avg"] = np.mean(list(scores.values()))
    return scores


def _images(seed, n=6, size=32):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.uniform(0, 255, (n, size, size, 3)), (0, 2, 2, 0))
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def test_swd_matches_the_float64_reference_and_vanishes_on_identical_sets():
    real, fake = _images(0), _images(1)
    kwargs = dict(seed=3, nhoods_per_image=16, dir_repeats=2, dirs_per_repeat=32)
    got = swd.swd(real, fake, **kwargs)
    expected = _reference_swd(real, fake, 3, 16, 2, 32)
    assert set(got) == {"swd_32", "swd_16", "swd_avg"}
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=2e-4, err_msg=key)
    assert got["swd_avg"] > 1.0
    assert swd.swd(real, real, **kwargs) == {key: 0.0 for key in got}


def test_swd_refuses_mismatched_sets():
    with pytest.raises(ValueError, match="equally many"):
        swd.swd(_images(0, n=4), _images(1, n=5))
