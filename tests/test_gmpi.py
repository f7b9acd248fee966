"""GMPI's alpha branch: the linear shortcut equals the explicit per-plane formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax.models.gmpi import GMPIGenerator, PlaneAlphas


def test_plane_alphas_equal_to_alpha_of_each_planes_conditioned_features():
    """ToAlpha(InstanceNorm(x) + E_i), materialised per plane in float64, equals the
    shared-map-plus-offset form."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 6)) * 3.0 + 1.0
    embeddings = rng.normal(size=(2, 5, 6))
    w = rng.normal(size=(2, 7))
    module = PlaneAlphas()
    args = [jnp.asarray(a, jnp.float32) for a in (x, embeddings, w)]
    params = nn.meta.unbox(module.init(jax.random.key(0), *args))["params"]
    params["bias"] = jnp.asarray([0.3])
    got = module.apply({"params": params}, *args)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    styles = w @ (p["affine"]["kernel"] / np.sqrt(7)) + p["affine"]["bias"]
    norm = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(
        x.var(axis=(1, 2), keepdims=True) + 1e-8)
    kernel = p["kernel"] / np.sqrt(6)
    expected = np.zeros((2, 5, 4, 4, 1))
    for b in range(2):
        for i in range(5):
            conditioned = norm[b] + embeddings[b, i]  # [4, 4, 6]
            expected[b, i] = (conditioned * styles[b]) @ kernel + p["bias"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_mpi_from_the_generator_any_plane_count_background_opaque():
    g = GMPIGenerator(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64,
                      channel_max=16, alpha_max_resolution=8)
    z = jax.random.normal(jax.random.key(1), (2, 8))
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    variables = jax.jit(g.init)(rngs, z, jnp.linspace(0.0, 1.0, 4))
    run = jax.jit(lambda d: g.apply(variables, z, d, rngs={"noise": jax.random.key(2)}))
    four = run(jnp.asarray([0.0, 0.3, 0.6, 1.0]))
    assert four["rgb"].shape == (2, 16, 16, 3) and four["alpha"].shape == (2, 4, 16, 16, 1)
    for key in ("rgb", "alpha"):
        assert float(four[key].min()) >= 0.0 and float(four[key].max()) <= 1.0
    np.testing.assert_array_equal(four["alpha"][:, -1], 1.0)
    # More planes without retraining: a plane's alpha depends only on its own depth.
    seven = run(jnp.asarray([0.0, 0.1, 0.3, 0.45, 0.6, 0.8, 1.0]))
    for i, j in ((0, 0), (1, 2), (2, 4)):
        np.testing.assert_allclose(seven["alpha"][:, j], four["alpha"][:, i], rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(seven["rgb"], four["rgb"], rtol=1e-6)


def test_pose_conditioned_discriminator_projects_onto_the_normalised_pose_embedding():
    from vq3d_jax.models.discriminator import ResidualDiscriminator

    d = ResidualDiscriminator(resolution=16, channel_base=128, channel_max=16,
                              condition_dim=16, cmap_dim=8)
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
    poses = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)  # flattened world-to-camera
    variables = jax.jit(d.init)(jax.random.key(0), images, poses)
    logits, state = jax.jit(lambda v, x, c: d.apply(v, x, c, capture_intermediates=True))(
        variables, images, poses)
    features = state["intermediates"]["b4_out"]["__call__"][0]
    cmap = state["intermediates"]["condition_map"]["__call__"][0]
    cmap = cmap / np.sqrt(np.mean(np.square(cmap), -1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(logits, np.sum(features * cmap, -1) / np.sqrt(8), rtol=1e-5)
    # The embedding is linear and unbiased at init: the opposite pose flips the logit.
    np.testing.assert_allclose(jax.jit(d.apply)(variables, images, -poses), -logits,
                               rtol=1e-5, atol=1e-6)
