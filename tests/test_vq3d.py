"""VQ3D's tri-plane decoder head, NeRF MLP and per-view rendering."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vq3d_jax import geometry as geo
from vq3d_jax.models.triplane_nerf import NeRFMLP, render_view
from vq3d_jax.models.vq3d import (
    TriplaneDecoder,
    VQ3DAutoencoder,
    canonical_camera,
    tokens_to_planes,
)


def test_tokens_to_planes_places_each_patch_under_its_token():
    b, grid, q, c = 2, 3, 2, 4
    x = np.arange(b * grid * grid * 3 * q * q * c, dtype=np.float32).reshape(
        b, grid * grid, 3 * q * q * c
    )
    planes = np.asarray(tokens_to_planes(jnp.asarray(x), q, c))
    assert planes.shape == (b, 3, grid * q, grid * q, c)
    per_token = x.reshape(b, grid, grid, 3, q, q, c)  # the documented layout
    for n, i, j, k, u, v in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 2, 1, 0), (0, 1, 2, 1, 0, 1)]:
        np.testing.assert_array_equal(
            planes[n, k, i * q + u, j * q + v], per_token[n, i, j, k, u, v]
        )


def test_triplane_decoder_shapes_and_logical_names():
    decoder = TriplaneDecoder(variant="mu", plane_resolution=16, plane_channels=8)
    tokens = jnp.ones((2, 16, 64))
    variables = decoder.init(jax.random.key(0, impl="rbg"), tokens)
    planes = decoder.apply(variables, tokens)
    assert planes.shape == (2, 3, 16, 16, 8) and planes.dtype == jnp.float32
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in boxed)


def test_nerf_mlp_density_and_colour_ranges():
    mlp = NeRFMLP(hidden=16, num_layers=2, out_features=3, density_bias=-1.0)
    feats = jax.random.normal(jax.random.PRNGKey(1), (5, 7, 8)) * 10.0
    variables = mlp.init(jax.random.key(0, impl="rbg"), feats)
    density, color = mlp.apply(variables, feats)
    assert density.shape == (5, 7) and color.shape == (5, 7, 3)
    assert float(density.min()) >= 0.0
    assert float(color.min()) >= -1e-3 and float(color.max()) <= 1.0 + 1e-3
    # Zero weights: σ = softplus(bias), colour = sigmoid(0) widened = 0.5.
    zeros = jax.tree.map(jnp.zeros_like, nn.meta.unbox(variables))
    density, color = mlp.apply(zeros, feats)
    np.testing.assert_allclose(density, np.log1p(np.exp(-1.0)), rtol=1e-6)
    np.testing.assert_allclose(color, 0.5, rtol=1e-6)


def test_vq3d_autoencoder_renders_a_homogeneous_medium_in_closed_form():
    """Zero MLP weights give σ = softplus(−1) everywhere: opacity = 1 − exp(−σ·distance)."""
    model = VQ3DAutoencoder(
        encoder_variant="mu", decoder_variant="mu", patch_size=8, image_size=16,
        codebook_size=16, code_dim=8, decoder_head="triplane", plane_resolution=8,
        plane_channels=4,
    )
    images = jnp.zeros((2, 16, 16, 3))
    variables = model.init(jax.random.key(0, impl="rbg"), images)
    planes, aux = model.apply(variables, images)
    assert planes.shape == (2, 3, 8, 8, 4) and aux["codes"].shape == (2, 4)

    mlp = NeRFMLP(hidden=8, num_layers=1)
    mlp_params = jax.tree.map(
        jnp.zeros_like, nn.meta.unbox(mlp.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))["params"])
    )
    k, c2w = canonical_camera(fov_deg=50.0, distance=2.0, size=5)
    near, far = 0.5, 3.0
    render = jax.vmap(
        lambda p, key: render_view(
            mlp, mlp_params, p, k, c2w, key,
            geo.RenderOptions(near=near, far=far, num_samples=32, num_importance=16,
                              chunk_size=10),
            height=5, width=5, background=jnp.zeros(3),
        )
    )
    out = render(planes, jax.random.split(jax.random.PRNGKey(1), 2))
    assert out["color"].shape == (2, 5, 5, 3)
    sigma = np.log1p(np.exp(-1.0))
    # Distance travelled between the z-depths near and far along each pixel's ray.
    _, directions = geo.pixel_rays(k, c2w, 5, 5)
    length = np.linalg.norm(np.asarray(directions), axis=-1)
    expected = 1.0 - np.exp(-sigma * (far - near) * length)
    np.testing.assert_allclose(out["opacity"][0], expected, rtol=1e-4)
    np.testing.assert_allclose(
        out["color"][1], np.broadcast_to(0.5 * expected[..., None], (5, 5, 3)), rtol=1e-4
    )


def test_lift_feature_map_puts_each_pixel_at_its_depth_on_its_ray():
    """Every pixel of the map lands at its own canonical ray's point at 1/disparity: the
    splat keeps one unit of weight per pixel per plane and the weight-averaged texel
    position of each plane equals the mean of those points' plane coordinates."""
    from vq3d_jax.models.vq3d import lift_feature_map

    res, near, scale = 16, 2.5, 0.3
    k, c2w = canonical_camera(50.0, 6.0, res, elevation_deg=18.0)
    rng = np.random.default_rng(0)
    depth = rng.uniform(4.0, 8.0, (res, res))  # inside the uncontracted ball at this scale
    logits = -np.log(depth / near - 1.0)  # sigmoid(logit) / near = 1 / depth
    # Plane p's channel c carries 1 + p + 10 c, so features routed to the wrong plane show.
    per_plane = 1.0 + np.arange(3)[:, None] + 10.0 * np.arange(2)[None, :]
    features = np.broadcast_to(per_plane.reshape(-1), (res, res, 3 * 2)).astype(np.float32)
    feature_map = np.concatenate([features, logits[..., None]], -1).astype(np.float32)
    planes, disparity = jax.jit(lift_feature_map, static_argnames=("scene_scale", "near"))(
        feature_map, k, c2w, scene_scale=scale, near=near)
    np.testing.assert_allclose(disparity, 1.0 / depth, rtol=1e-5)
    assert planes.shape == (3, res, res, 2)
    rows, cols = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5, indexing="ij")
    points = geo.unproject(np.stack([cols, rows], -1), depth, k, c2w)
    coords = np.asarray(geo.contract_to_unit(points * scale)).reshape(-1, 3)
    sums, weights = geo.splat_to_triplane(coords, np.ones((res * res, 3, 1)), res)
    coverage = sums[..., 0] / np.maximum(weights, 1.0)  # [3, R, R]
    np.testing.assert_allclose(planes, coverage[..., None] * per_plane[:, None, None, :],
                               rtol=1e-5, atol=1e-5)
    centres = -1.0 + (2.0 * np.arange(res) + 1.0) / res
    for plane, (a, b) in enumerate(geo.PLANE_AXES):
        w = np.asarray(weights[plane])
        assert w.sum() == pytest.approx(res * res, rel=1e-5)
        assert (w * centres[None, :]).sum() / w.sum() == pytest.approx(coords[:, a].mean(),
                                                                        abs=1e-5)
        assert (w * centres[:, None]).sum() / w.sum() == pytest.approx(coords[:, b].mean(),
                                                                        abs=1e-5)
