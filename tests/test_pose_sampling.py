"""GMPI-style training cameras: on the sphere, looking at its centre, truncated angles."""

import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax.geometry import pose_sampling as ps

AFHQ = ps.PoseDistribution(yaw_std=0.19, pitch_std=0.15, truncation=3.0, radius=2.7,
                           center_depth=2.7)


def test_cameras_stand_on_the_sphere_and_look_at_its_centre():
    cams, yaw_pitch = ps.sample_cameras(jax.random.key(0), 64, AFHQ)
    centre = np.asarray(AFHQ.center())
    eye = np.asarray(cams[:, :3, 3])
    np.testing.assert_allclose(np.linalg.norm(eye - centre, axis=-1), 2.7, rtol=1e-5)
    forward = np.asarray(cams[:, :3, 2])
    to_centre = (centre - eye) / np.linalg.norm(centre - eye, axis=-1, keepdims=True)
    np.testing.assert_allclose(forward, to_centre, atol=1e-5)
    rot = np.asarray(cams[:, :3, :3])
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-5)
    # No roll: the camera's x axis stays horizontal (⊥ world up, −y).
    np.testing.assert_allclose(rot[:, 1, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(ps.cameras_at(jnp.zeros(2), AFHQ), np.eye(4), atol=1e-6)


def test_angles_follow_the_truncated_gaussian():
    yaw_pitch = np.asarray(ps.sample_yaw_pitch(jax.random.key(1), 200_000, AFHQ))
    bound = np.asarray([0.19, 0.15]) * 3.0
    assert np.all(np.abs(yaw_pitch) <= bound + 1e-6)
    # A N(0, 1) truncated at ±3 has std √(1 − 6φ(3)/(Φ(3) − Φ(−3))) ≈ 0.9866.
    phi3 = np.exp(-4.5) / np.sqrt(2 * np.pi)
    mass = 0.9973002039367398
    std = np.sqrt(1 - 6 * phi3 / mass)
    np.testing.assert_allclose(yaw_pitch.std(0), np.asarray([0.19, 0.15]) * std, rtol=0.01)
    np.testing.assert_allclose(yaw_pitch.mean(0), 0.0, atol=2e-3)
