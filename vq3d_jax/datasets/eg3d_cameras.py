"""EG3D's `dataset.json` cameras ↔ the library's convention, at the dataset boundary.

EG3D (Chan et al. 2022) ships FFHQ/AFHQ labels as 25 floats per image: a cam-to-world
4×4, row-major, then a 3×3 intrinsic matrix normalised by the image size (f_x/W, f_y/H,
principal point (0.5, 0.5)). Its camera frame is OpenCV's (+x right, +y down, +z
forward), as ours; its world has +y up (its look-at poses use up = (0, 1, 0)), ours −y.
The conversion is the world rotation F = diag(1, −1, −1) (a half-turn about x: proper, so
right-handedness and the camera frame stay): c2w_ours = F · c2w_eg3d, and intrinsics in
pixels K = diag(W, H, 1) · K_normalised. A camera EG3D places at +z looking at the origin
lands at −z looking down +z, like our canonical camera.
"""

from __future__ import annotations

import numpy as np

WORLD_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # EG3D world → ours (its own inverse)
LABEL_SIZE = 25


def from_eg3d_label(label, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """25 floats → (intrinsics [3, 3] in pixels, cam-to-world [4, 4]) in our convention."""
    label = np.asarray(label, np.float64).reshape(-1)
    if label.shape != (LABEL_SIZE,):
        raise ValueError(f"an EG3D camera label has {LABEL_SIZE} values (16 cam-to-world + "
                         f"9 normalised intrinsics), got {label.size}.")
    cam_to_world = WORLD_FLIP @ label[:16].reshape(4, 4)
    intrinsics = np.diag([width, height, 1.0]) @ label[16:].reshape(3, 3)
    return intrinsics, cam_to_world


def to_eg3d_label(intrinsics, cam_to_world, height: int, width: int) -> np.ndarray:
    """The inverse of `from_eg3d_label` → 25 floats."""
    normalised = np.diag([1.0 / width, 1.0 / height, 1.0]) @ np.asarray(intrinsics, np.float64)
    eg3d = WORLD_FLIP @ np.asarray(cam_to_world, np.float64)
    return np.concatenate([eg3d.reshape(-1), normalised.reshape(-1)])
