"""GMNR's view-dependent colour: the MLPs against a float64 numpy reference, and α-VdR
in a view (only the α-guided pixels change; the sampled path agrees with the dense one)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from conftest import override

from configs import gmnr
from vq3d_jax import geometry as geo
from vq3d_jax.geometry import pose_sampling
from vq3d_jax.models.gmnr import ViewDependentColor
from vq3d_jax.models.gmpi import GMPIHead


def _encode(x, frequencies):
    angles = np.concatenate([x[:, j:j + 1] * 0.5 * np.pi * 2.0 ** np.arange(frequencies)
                             for j in range(x.shape[1])], 1)
    return np.concatenate([np.sin(angles), np.cos(angles)], 1)


def _mlp(p, x, w, depth):
    """[x, w] through the layers, the first on the concatenation."""
    first = np.concatenate([p["encoding"]["kernel"], p["style"]["kernel"]], 0)
    h = np.concatenate([x, np.broadcast_to(w, (x.shape[0], w.shape[0]))], 1) @ first
    h = h + p["encoding"]["bias"]
    h = np.where(h > 0, h, 0.01 * h)
    for i in range(depth - 1):
        h = h @ p[f"hidden{i}"]["kernel"] + p[f"hidden{i}"]["bias"]
        h = np.where(h > 0, h, 0.01 * h)
    return h @ p["out"]["kernel"] + p["out"]["bias"]


def test_view_dependent_colour_equals_the_explicit_formula():
    """Δc = tanh(PosMLP[γ(u,v), γ(d), w]) (3×4) · tanh(ViewMLP[γ(r_x, r_y), w]) (4)."""
    rng = np.random.default_rng(0)
    n, w_dim = 7, 5
    uv = rng.uniform(-1, 1, (n, 2))
    depth = rng.uniform(0, 1, n)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    w = rng.normal(size=w_dim)
    module = ViewDependentColor(position_width=12, view_width=6)
    args = [jnp.asarray(a, jnp.float32) for a in (uv, depth, direction, w)]
    params = nn.meta.unbox(module.init(jax.random.key(0), *args))["params"]
    got = module.apply({"params": params}, *args)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    position = np.concatenate([_encode(uv, 10), _encode(depth[:, None], 8)], 1)
    assert position.shape[1] == 56
    k = np.tanh(_mlp(p["position"], position, w, 3)).reshape(n, 3, 4)
    h = np.tanh(_mlp(p["view"], _encode(direction[:, :2], 3), w, 2))
    expected = np.einsum("nck,nk->nc", k, h)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


SMALL = {"data.image_size": 8, "model.resolution": 8, "model.num_planes": 4,
         "model.channel_base": 256, "model.channel_max": 16, "model.z_dim": 16,
         "model.w_dim": 16}


def test_alpha_guided_view_dependence_changes_only_the_sampled_pixels():
    config = override(gmnr.get_config("tiny"), SMALL)
    cam = config.camera
    poses = pose_sampling.PoseDistribution(cam.yaw_std, cam.pitch_std, cam.truncation,
                                           cam.radius, cam.radius)
    head = GMPIHead(config.model, poses, cam.fov_deg)
    params = jax.jit(head.init)(jax.random.key(0))
    depths, normalised, extents = head.plane_layout(4)
    rgba = jax.random.uniform(jax.random.key(1), (4, 8, 8, 4))
    rgba = rgba.at[..., 3].multiply(jnp.asarray([0.0, 1.0, 1.0, 1.0])[:, None, None])
    c2w = pose_sampling.cameras_at(jnp.asarray([0.2, -0.1]), poses)

    @jax.jit
    def warp(rgba):
        warped = geo.warp_mpi(rgba, depths, extents, poses.reference_camera(),
                              head.intrinsics, c2w, 8, 8)
        return warped, geo.composite_mpi(warped["rgb"], warped["alpha"],
                                         warped["z"])["weights"]

    warped, weights = warp(rgba)
    w = jax.random.normal(jax.random.key(2), (16,))

    def colours(fraction):
        run = jax.jit(lambda p, warped, weights: head._view_dependent_colors(
            p, warped, weights, c2w, w, normalised, jax.random.key(3), fraction))
        return np.asarray(run(params, warped, weights))

    dense, original = colours(1.0), np.asarray(warped["rgb"])
    visible = np.asarray(weights) > 0
    assert not visible[0].any() and visible[1:].any()  # plane 0 is transparent
    changed = np.any(dense != original, axis=-1)
    assert changed.sum() > 0.9 * visible.sum() and not np.any(changed & ~visible)
    assert dense.min() >= 0.0 and dense.max() <= 1.0
    # The sampled path with every visible pixel drawn is the dense path (the gather,
    # the MLP and the scatter agree).
    np.testing.assert_allclose(colours(1.0 - 1e-6), dense, rtol=1e-6, atol=1e-7)
    # Half of each plane's visible pixels change; the rest keep the warped colour.
    half = colours(0.5)
    changed = np.any(half != original, axis=-1)
    assert not np.any(changed & ~visible)
    for plane in range(1, 4):
        n = visible[plane].sum()
        assert 0.8 * -(-n // 2) <= changed[plane].sum() <= -(-n // 2)
        np.testing.assert_allclose(half[plane][changed[plane]],
                                   dense[plane][changed[plane]], rtol=1e-6, atol=1e-7)


def test_any_plane_count_renders_under_jit_and_the_background_covers_every_view():
    """A plane count first asked for inside a jit (7: neither the training nor the eval
    count) gets its layout on the host; at cameras across the pose range every pixel
    hits the opaque back plane, so the opacity is 1."""
    config = override(gmnr.get_config("tiny"), SMALL)
    cam = config.camera
    poses = pose_sampling.PoseDistribution(cam.yaw_std, cam.pitch_std, cam.truncation,
                                           cam.radius, cam.radius)
    head = GMPIHead(config.model, poses, cam.fov_deg)
    params = jax.jit(head.init)(jax.random.key(0))
    edge = np.asarray([cam.yaw_std, cam.pitch_std]) * cam.truncation
    cameras = pose_sampling.cameras_at(jnp.asarray([[0.0, 0.0], edge, -edge]), poses)[None]
    ws = head.mapping(params, jax.random.normal(jax.random.key(1), (1, 16)))
    render = jax.jit(lambda p, w, c: head.render(p, w, c, jax.random.key(2), num_planes=7,
                                                 sample_fraction=1.0))
    out = render(params, ws, cameras)
    assert out["image"].shape == (1, 3, 8, 8, 3) and 7 in head._layouts
    np.testing.assert_allclose(out["opacity"], 1.0, atol=1e-6)
