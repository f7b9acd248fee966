"""EG3D dataset.json cameras convert to the library's convention and back."""

import numpy as np
import pytest

from vq3d_jax.datasets import cameras_np
from vq3d_jax.datasets.eg3d_cameras import from_eg3d_label, to_eg3d_label

# EG3D's frontal FFHQ camera: 2.7 units up the +z axis looking at the origin, world +y up
# (its create_cam2world_matrix: right = −(up × forward), up' = forward × right).
FORWARD = np.array([0.0, 0.0, -1.0])
RIGHT = -np.cross([0.0, 1.0, 0.0], FORWARD)
DOWN = np.cross(FORWARD, RIGHT)  # EG3D's camera "up" column, (0, −1, 0): image down
EG3D_C2W = np.eye(4)
EG3D_C2W[:3, :3] = np.stack([RIGHT, DOWN, FORWARD], axis=1)
EG3D_C2W[:3, 3] = [0.0, 0.0, 2.7]
EG3D_K = np.array([[4.2647, 0.0, 0.5], [0.0, 4.2647, 0.5], [0.0, 0.0, 1.0]])


def _eg3d_project(point, c2w, k_normalised, size):
    """EG3D's pinhole: camera = c2w⁻¹ · point, pixel = size · K_normalised · (x/z, y/z, 1)."""
    cam = np.linalg.inv(c2w) @ np.append(point, 1.0)
    uv = k_normalised @ (cam[:3] / cam[2])
    return uv[:2] * size


def test_a_known_eg3d_camera_lands_in_our_convention_and_back():
    label = np.concatenate([EG3D_C2W.reshape(-1), EG3D_K.reshape(-1)])
    k, c2w = from_eg3d_label(label, 256, 256)
    # Our canonical pose: at −z looking down +z at the origin; image down is world +y.
    np.testing.assert_allclose(c2w[:3, 3], [0.0, 0.0, -2.7], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 2], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], [0.0, 1.0, 0.0], atol=1e-12)
    assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0)
    np.testing.assert_allclose(k, [[4.2647 * 256, 0, 128], [0, 4.2647 * 256, 128], [0, 0, 1]])
    np.testing.assert_allclose(to_eg3d_label(k, c2w, 256, 256), label, atol=1e-12)
    # A point above the head (EG3D +y) projects to the same pixel in both conventions,
    # above the image centre; ours sees it at world −y.
    point = np.array([0.05, 0.1, 0.02])
    ours = cameras_np.project(np.diag([1.0, -1.0, -1.0]) @ point, k, c2w)[0]
    np.testing.assert_allclose(ours, _eg3d_project(point, EG3D_C2W, EG3D_K, 256), atol=1e-9)
    assert ours[1] < 128


def test_random_cameras_round_trip_and_bad_labels_are_refused():
    rng = np.random.default_rng(0)
    for _ in range(5):
        c2w = cameras_np.look_at(rng.normal(size=3) * 3.0, rng.normal(size=3) * 0.1)
        k = cameras_np.intrinsics_from_fov(rng.uniform(10, 60), 128, 96)
        label = to_eg3d_label(k, c2w, 96, 128)
        back_k, back_c2w = from_eg3d_label(label, 96, 128)
        np.testing.assert_allclose(back_c2w, c2w, atol=1e-12)
        np.testing.assert_allclose(back_k, k, atol=1e-9)
    with pytest.raises(ValueError, match="25 values"):
        from_eg3d_label(np.zeros(16), 64, 64)
