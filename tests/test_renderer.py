"""Hierarchical ray rendering of an analytic field against its closed-form geometry."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax import geometry as geo
from vq3d_jax.geometry.field_rendering import FAR_BACKDROP_T

CENTRE = jnp.asarray([0.0, 0.0, 4.0])
RADIUS = 1.0
COLOUR = jnp.asarray([0.2, 0.6, 0.9])


def sphere_field(points):
    """An opaque coloured ball of radius 1 at z = 4 in empty space."""
    inside = jnp.linalg.norm(points - CENTRE, axis=-1) < RADIUS
    density = jnp.where(inside, 200.0, 0.0)
    colour = jnp.broadcast_to(COLOUR, points.shape)
    return density, colour


def _camera_rays(size=9):
    k = geo.intrinsics_from_fov(40.0, size, size)
    c2w = jnp.eye(4)  # at the origin, looking down +z at the ball
    return geo.pixel_rays(k, c2w, size, size)


def test_sphere_depth_opacity_and_background():
    origins, directions = _camera_rays()
    render = jax.jit(
        lambda o, d: geo.render_rays(
            sphere_field, o, d, jax.random.PRNGKey(0),
            geo.RenderOptions(near=0.5, far=jnp.inf, num_samples=64, num_importance=64),
            background=jnp.ones(3),
        )
    )
    out = render(origins, directions)
    centre = out["depth_normalized"][4, 4]
    # The centre pixel's ray is the optical axis: first hit at z = 4 − 1.
    np.testing.assert_allclose(centre, 3.0, atol=0.03)
    np.testing.assert_allclose(out["opacity"][4, 4], 1.0, atol=1e-3)
    np.testing.assert_allclose(out["color"][4, 4], COLOUR, atol=2e-3)
    # A corner ray misses the ball (tan 20° · 4 > 1 at the corner): background shows.
    np.testing.assert_allclose(out["opacity"][0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["color"][0, 0], 1.0, atol=1e-6)
    # Importance samples concentrate at the surface: the ray's weight sits within ±0.05.
    t, w = out["t"][4, 4], out["weights"][4, 4]
    assert float(jnp.sum(jnp.where(jnp.abs(t - 3.0) < 0.05, w, 0.0))) > 0.95
    assert out["sample_disparity"].shape == out["t"].shape == (9, 9, 128)


def test_chunked_rendering_equals_unchunked():
    origins, directions = _camera_rays(size=5)
    options = geo.RenderOptions(near=0.5, far=jnp.inf, num_samples=16, num_importance=8,
                                randomized=False)
    whole = geo.render_rays(sphere_field, origins, directions, jax.random.PRNGKey(1), options)
    chunked = geo.render_rays(sphere_field, origins, directions, jax.random.PRNGKey(1),
                              dataclasses.replace(options, chunk_size=7))
    for key in ("color", "depth", "opacity", "weights", "t"):
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-6, atol=1e-6, err_msg=key)


def sky(directions):
    return 0.5 * (directions / jnp.linalg.norm(directions, axis=-1, keepdims=True) + 1.0)


def sphere_under_sky(points):
    """The ball in empty space, and a sky colour by direction at (near) infinity."""
    density, colour = sphere_field(points)
    far = jnp.linalg.norm(points, axis=-1, keepdims=True) > 1e9
    return density, jnp.where(far, sky(points), colour)


def test_far_backdrop_ends_missed_rays_on_the_sky_in_their_own_direction():
    origins, directions = _camera_rays()
    options = geo.RenderOptions(near=0.5, far=jnp.inf, num_samples=64, num_importance=64,
                                far_backdrop=True)
    render = jax.jit(lambda o, d: geo.render_rays(sphere_under_sky, o, d,
                                                  jax.random.PRNGKey(0), options,
                                                  background=jnp.zeros(3)))
    out = render(origins, directions)
    # A hit is rendered as without the backdrop; one more sample ends every ray.
    np.testing.assert_allclose(out["depth_normalized"][4, 4], 3.0, atol=0.03)
    np.testing.assert_allclose(out["color"][4, 4], COLOUR, atol=2e-3)
    assert out["t"].shape == (9, 9, 129)
    # A miss is opaque, at disparity 0, with the sky seen along its direction...
    np.testing.assert_allclose(out["opacity"][0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out["disparity"][0, 0], 0.0, atol=1e-9)
    np.testing.assert_allclose(out["color"][0, 0], sky(directions[0, 0]), atol=1e-5)
    # ...wherever the camera stands (a sideways step of 0.5 still misses the ball there).
    moved = render(origins + jnp.asarray([-0.5, 0.0, 0.0]), directions)
    np.testing.assert_allclose(moved["color"][0, 0], out["color"][0, 0], atol=1e-5)


def test_far_backdrop_keeps_every_finite_sample_where_it_was():
    """The backdrop is one more sample, not a replacement for the last finite one: ground
    beyond the last bin edge (30 near-units at 12 bins) must still have a sample there."""
    origins, directions = _camera_rays(size=3)
    options = geo.RenderOptions(near=0.5, far=jnp.inf, num_samples=12, num_importance=0,
                                randomized=False)
    plain = geo.render_rays(sphere_field, origins, directions, jax.random.PRNGKey(0), options)
    with_sky = geo.render_rays(sphere_field, origins, directions, jax.random.PRNGKey(0),
                               dataclasses.replace(options, far_backdrop=True))
    np.testing.assert_allclose(with_sky["t"][..., :-1], plain["t"], rtol=1e-6)
    np.testing.assert_allclose(with_sky["t"][..., -1], FAR_BACKDROP_T)
    # The finite samples' weights are unchanged on a hit (the ball stops the ray first).
    np.testing.assert_allclose(with_sky["weights"][1, 1, :-1], plain["weights"][1, 1],
                               atol=1e-6)
