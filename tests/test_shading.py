"""GMPI's shading augmentation: blur, normals, MPI points and the light, in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import override
from scipy import ndimage

from configs import gmpi
from vq3d_jax.geometry import shading


def test_gaussian_blur_matches_scipy_with_reflected_edges_and_keeps_constants():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 12, 15))
    sigma = 0.3 * (4 - 1) + 0.8  # OpenCV's σ for a 9-tap kernel: 1.7
    taps = np.exp(-0.5 * (np.arange(-4, 5) / sigma) ** 2)
    taps /= taps.sum()
    expected = ndimage.correlate1d(ndimage.correlate1d(image, taps, axis=1, mode="mirror"),
                                   taps, axis=2, mode="mirror")
    np.testing.assert_allclose(shading.gaussian_blur(jnp.asarray(image, jnp.float32)),
                               expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shading.gaussian_blur(jnp.full((10, 10), 3.0)), 3.0,
                               rtol=1e-6)


def test_normals_of_a_tilted_plane_are_its_normal_facing_the_camera():
    """Points of z = a x + b y + c: the unit normal ∝ (a, b, −1) at every point, edges
    included (replicated)."""
    a, b, c = 0.3, -0.5, 4.0
    y, x = np.meshgrid(np.linspace(-1, 1, 7), np.linspace(-1, 1, 9), indexing="ij")
    points = np.stack([x, y, a * x + b * y + c], -1)
    expected = np.array([a, b, -1.0]) / np.linalg.norm([a, b, -1.0])
    got = np.asarray(shading.normals_from_points(jnp.asarray(points, jnp.float32)))
    np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), atol=1e-5)


def test_an_opaque_plane_puts_the_points_on_it_and_a_head_on_light_is_full_shading():
    depths = jnp.asarray([2.0, 3.0, 5.0])
    alpha = jnp.zeros((1, 3, 6, 8)).at[:, 1].set(1.0).at[:, 2].set(1.0)  # plane 1 opaque
    half = jnp.asarray([2.0, 1.5])  # the back plane's half extents
    points = np.asarray(shading.mpi_points(alpha, depths, half))[0]
    np.testing.assert_allclose(points[..., 2], 3.0, rtol=1e-6)
    # The back plane's texel centres, scaled by 3/5 onto the opaque plane.
    np.testing.assert_allclose(points[0, :, 0], (-2.0 + (np.arange(8) + 0.5) * 0.5) * 0.6,
                               rtol=1e-5)
    np.testing.assert_allclose(points[:, 0, 1], (-1.5 + (np.arange(6) + 0.5) * 0.5) * 0.6,
                               rtol=1e-5)
    rgb = jnp.full((1, 6, 8, 3), 0.5)
    head_on = shading.Light(jnp.asarray([[0.0, 0.0, 1.0]]), ka=0.6, kd=0.3)
    np.testing.assert_allclose(shading.shade_mpi(rgb, alpha, depths, half, head_on), 0.45,
                               rtol=1e-5)  # 0.5 · (0.6 + 0.3 · 1)
    grazing = shading.Light(jnp.asarray([[1.0, 0.0, 0.0]]), ka=0.6, kd=0.3, strength=0.5)
    np.testing.assert_allclose(shading.shade_mpi(rgb, alpha, depths, half, grazing),
                               0.5 * (1.0 + 0.5 * (0.6 - 1.0)), rtol=1e-5)


def test_the_task_lights_from_above_and_ramps_in():
    from vq3d_jax.tasks.gan_task import GANTask

    config = override(gmpi.get_config("tiny"), {"loss.shading.enabled": True,
                                                "loss.shading.start_step": 100,
                                                "loss.shading.ramp_steps": 50})
    task = GANTask(config)
    light = task.training.light(jax.random.split(jax.random.key(0), 64), jnp.asarray(125))
    direction = np.asarray(light.direction)
    np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0, rtol=1e-5)
    # World up is −y: a light above the object shines down (+y), towards +z from the
    # camera side, at elevations within 0.2 ± 2·0.05 rad.
    elevation = np.arcsin(direction[:, 1])
    assert np.all(elevation > 0.2 - 0.1 - 1e-5) and np.all(elevation < 0.2 + 0.1 + 1e-5)
    assert np.all(direction[:, 2] > 0)
    assert float(light.strength) == 0.5
    keys = jax.random.split(jax.random.key(0), 2)
    for step, strength in ((0, 0.0), (100, 0.0), (150, 1.0), (10_000, 1.0)):
        assert float(task.training.light(keys, jnp.asarray(step)).strength) == strength
    assert GANTask(gmpi.get_config("tiny")).training.light(keys, 0) is None
