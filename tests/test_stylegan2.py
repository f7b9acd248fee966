"""StyleGAN2's generator pieces against explicit formulas and numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vq3d_jax.models import stylegan2 as sg2
from vq3d_jax.nn import stylegan

FIR = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0


def _numpy_upfirdn(x, up, down, pad):
    """Zero-insert, pad, 2D-correlate with up²·(f ⊗ f), subsample: float64 loops."""
    b, h, w, c = x.shape
    grid = np.zeros((b, h * up, w * up, c))
    grid[:, ::up, ::up] = x
    grid = np.pad(grid, ((0, 0), pad, pad, (0, 0)))
    kernel = np.outer(FIR, FIR) * up * up
    out_h, out_w = grid.shape[1] - 3, grid.shape[2] - 3
    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = np.einsum("bklc,kl->bc", grid[:, i:i + 4, j:j + 4], kernel)
    return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (1, 2))])
def test_upfirdn_matches_numpy_and_keeps_a_constant(up, down, pad):
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3))
    got = stylegan.upfirdn2d(jnp.asarray(x, jnp.float32), up=up, down=down, pad=pad)
    np.testing.assert_allclose(got, _numpy_upfirdn(x, up, down, pad), rtol=1e-5, atol=1e-5)
    const = stylegan.upfirdn2d(jnp.full((1, 8, 8, 1), 0.7), up=up, down=down, pad=pad)
    np.testing.assert_allclose(const[0, 2:-2, 2:-2], 0.7, rtol=1e-6)  # away from the padding


def _explicit_modulated_conv(x, w, params, k, up, demodulate):
    """Per-sample kernels w''_ijk = s_i w_ijk / √(Σ (s_i w_ijk)² + ε), convolved one sample
    at a time (for up=2: over the zero-interleaved input, then the ×4 [1,3,3,1] filter)."""
    affine = params["affine"]
    styles = w @ (np.asarray(affine["kernel"], np.float64) / np.sqrt(w.shape[-1]))
    styles = styles + np.asarray(affine["bias"], np.float64)
    base = np.asarray(params["kernel"], np.float64) / np.sqrt(k * k * x.shape[-1])
    outs = []
    for n in range(x.shape[0]):
        kernel = base * styles[n][None, None, :, None]
        if demodulate:
            kernel = kernel / np.sqrt(np.sum(kernel**2, axis=(0, 1, 2)) + 1e-8)
        image = x[n:n + 1]
        if up == 2:
            spread = np.zeros((1, 2 * image.shape[1] - 1, 2 * image.shape[2] - 1, image.shape[3]))
            spread[:, ::2, ::2] = image
            image, pad = spread, k - 1
        else:
            pad = k // 2
        image = np.pad(image, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        h, wd = image.shape[1] - k + 1, image.shape[2] - k + 1
        y = np.zeros((1, h, wd, kernel.shape[-1]))
        for i in range(h):
            for j in range(wd):
                y[:, i, j] = np.einsum("bklc,klco->bo", image[:, i:i + k, j:j + k], kernel)
        if up == 2:
            y = _numpy_upfirdn(y, 1, 1, (1, 1)) * 4.0
        outs.append(y)
    return np.concatenate(outs)


@pytest.mark.parametrize("k,up,demodulate", [(3, 1, True), (1, 1, False), (3, 2, True)])
def test_modulated_conv_equals_the_explicit_per_sample_kernel(k, up, demodulate):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, 4))
    w = rng.normal(size=(2, 6))
    layer = stylegan.ModulatedConv2d(3, k, up=up, demodulate=demodulate)
    variables = layer.init(jax.random.key(0), jnp.asarray(x, jnp.float32),
                           jnp.asarray(w, jnp.float32))
    params = nn.meta.unbox(variables)["params"]
    # A non-trivial affine bias, so styles are not ≈ 1.
    params["affine"]["bias"] = jnp.asarray(rng.normal(size=4), jnp.float32)
    got = layer.apply({"params": params}, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    assert got.shape == (2, 5 * up, 5 * up, 3)
    expected = _explicit_modulated_conv(x, w, jax.tree.map(np.asarray, params), k, up,
                                        demodulate)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_truncation_and_style_mixing():
    rng = np.random.default_rng(2)
    ws = jnp.asarray(rng.normal(size=(3, 6, 4)), jnp.float32)
    other = jnp.asarray(rng.normal(size=(3, 6, 4)), jnp.float32)
    average = jnp.asarray(rng.normal(size=4), jnp.float32)
    np.testing.assert_allclose(sg2.truncate(ws, average, 0.0),
                               np.broadcast_to(average, ws.shape), rtol=1e-6)
    np.testing.assert_allclose(sg2.truncate(ws, average, 1.0), ws, rtol=1e-6, atol=1e-6)
    half = sg2.truncate(ws, average, 0.5, cutoff=2)
    np.testing.assert_allclose(half[:, :2], (ws[:, :2] + average) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(half[:, 2:], ws[:, 2:])
    np.testing.assert_array_equal(sg2.mix_styles(jax.random.key(0), ws, other, 0.0), ws)
    mixed = np.asarray(sg2.mix_styles(jax.random.key(0), ws, other, 1.0))
    for n in range(3):  # one switch per sample, after at least one layer of its own w
        from_other = [np.array_equal(mixed[n, i], other[n, i]) for i in range(6)]
        cut = from_other.index(True)
        assert cut >= 1 and all(from_other[cut:]) and not any(from_other[:cut])
    beta = 0.9
    tracked = sg2.track_w_average(average, ws[:, 0], beta)
    np.testing.assert_allclose(tracked, beta * average + (1 - beta) * np.mean(ws[:, 0], 0),
                               rtol=1e-5)


def test_tiny_generator_shapes_styles_and_noise():
    g = sg2.Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64,
                      channel_max=16)
    z = jax.random.normal(jax.random.key(1), (2, 8))
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    variables = g.init(rngs, z)
    image = g.apply(variables, z, rngs={"noise": jax.random.key(2)})
    assert image.shape == (2, 16, 16, 3) and image.dtype == jnp.float32
    assert sg2.num_styles(16) == 6 and sg2.num_styles(1024) == 18
    ws = g.apply(variables, z, method=sg2.Generator.mapping)
    assert ws.shape == (2, 6, 8)
    _, features = g.apply(variables, ws, True, method=sg2.Generator.synthesis,
                          rngs={"noise": jax.random.key(2)})
    assert {r: f.shape[-1] for r, f in features.items()} == {4: 16, 8: 8, 16: 4}
    # Noise strengths start at 0: the image does not depend on the noise draw; with a
    # strength it does, through every layer's noise input.
    again = g.apply(variables, z, rngs={"noise": jax.random.key(3)})
    np.testing.assert_array_equal(image, again)
    noisy = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.ones_like(leaf) if "noise_strength" in str(path) else leaf,
        nn.meta.unbox(variables))
    draws = [g.apply(noisy, z, rngs={"noise": jax.random.key(k)}) for k in (2, 3)]
    assert float(jnp.max(jnp.abs(draws[0] - draws[1]))) > 1e-3
    # ψ = 0 maps every z to the average w, hence to one image.
    average = jnp.mean(ws[:, 0], axis=0)
    same = g.apply(variables, z, psi=0.0, w_average=average, rngs={"noise": jax.random.key(2)})
    np.testing.assert_allclose(same[0], same[1], rtol=1e-5, atol=1e-6)
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert any(isinstance(leaf, nn.LogicallyPartitioned) for leaf in boxed)
