"""data/prepare_eg3d.py: an EG3D-format folder / zip → TFDS, cameras in our convention."""

import importlib.util
import json
import pathlib
import sys
import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vq3d_jax.datasets import pipeline
from vq3d_jax.tasks.gan_task import yaw_pitch_of

_PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "prepare_eg3d.py"
_spec = importlib.util.spec_from_file_location("prepare_eg3d", _PATH)
prepare_eg3d = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_eg3d)

SIZE = 16
FOCAL = 4.2647  # EG3D's FFHQ focal length over the image width


def _eg3d_look_at(yaw: float, radius: float = 2.7) -> np.ndarray:
    """EG3D's camera (world +y up, OpenCV axes) on its orbit at `yaw`, at the origin."""
    eye = radius * np.array([np.sin(yaw), 0.0, np.cos(yaw)])
    forward = -eye / np.linalg.norm(eye)
    down = np.array([0.0, -1.0, 0.0])
    right = np.cross(down, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], 1)
    c2w[:3, 3] = eye
    return c2w


def _label(yaw: float) -> list:
    k = np.array([[FOCAL, 0.0, 0.5], [0.0, FOCAL, 0.5], [0.0, 0.0, 1.0]])
    return np.concatenate([_eg3d_look_at(yaw).reshape(-1), k.reshape(-1)]).tolist()


# Five good images (each one flat colour, 32² and one 48×32), one unreadable file and one
# label naming a file that is not there; yaw 0.1 · i.
COLOURS = {f"img{i:02d}.png": (40 * i, 255 - 30 * i, 17 * i) for i in range(5)}


def _write_folder(root: pathlib.Path) -> pathlib.Path:
    root.mkdir()
    labels = []
    for i, (name, colour) in enumerate(COLOURS.items()):
        shape = (32, 48, 3) if i == 3 else (32, 32, 3)
        Image.fromarray(np.full(shape, colour, np.uint8)).save(root / name)
        labels.append([name, _label(0.1 * i)])
    (root / "broken.png").write_bytes(b"not an image")
    labels += [["broken.png", _label(0.0)], ["absent.png", _label(0.0)]]
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def _build(source, data_dir, name) -> dict:
    return prepare_eg3d.main([f"--source={source}", f"--output_name={name}",
                              f"--data_dir={data_dir}", f"--image_size={SIZE}",
                              "--num_validation=2"])


def _records(name, data_dir, split, n):
    data = ml_collections.ConfigDict({"name": name, "data_dir": str(data_dir),
                                      "image_size": SIZE, "worker_count": 0,
                                      "with_depth": False, "with_cameras": True,
                                      "with_novel_views": False})
    (batch,) = pipeline.create_eval_iterator(data, split=split, global_batch_size=n,
                                             process_index=0, process_count=1)
    return batch


def test_eg3d_folder_and_zip_build_the_same_dataset_with_our_cameras(tmp_path):
    folder = _write_folder(tmp_path / "eg3d")
    archive = tmp_path / "eg3d.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in folder.iterdir():
            z.write(path, path.name)
    # Sorted names: absent, broken, img00 … img04; the last 2 are the validation split.
    expected_counts = {"train": (3, 2), "validation": (2, 0)}
    assert _build(folder, tmp_path / "tfds", "from_folder") == expected_counts
    assert _build(archive, tmp_path / "tfds", "from_zip") == expected_counts
    for split, names in (("train", ["img00", "img01", "img02"]),
                         ("validation", ["img03", "img04"])):
        got = _records("from_folder", tmp_path / "tfds", split, len(names))
        zipped = _records("from_zip", tmp_path / "tfds", split, len(names))
        for key in ("image", "cam_to_world", "intrinsics"):
            np.testing.assert_array_equal(got[key], zipped[key])
        for j, name in enumerate(names):
            i = int(name[3:])
            np.testing.assert_array_equal(got["image"][j], np.full((SIZE, SIZE, 3),
                                                                   COLOURS[name + ".png"]))
            # Known answer: EG3D's camera at yaw θ on its +z orbit is ours on the −z orbit
            # (world y and z flipped), looking at the origin, image rows down our +y.
            yaw = 0.1 * i
            c2w = got["cam_to_world"][j]
            np.testing.assert_allclose(c2w[:3, 3], [2.7 * np.sin(yaw), 0.0,
                                                    -2.7 * np.cos(yaw)], atol=1e-5)
            np.testing.assert_allclose(c2w[:3, 2], -c2w[:3, 3] / 2.7, atol=1e-6)
            np.testing.assert_allclose(c2w[:3, 1], [0.0, 1.0, 0.0], atol=1e-6)  # image down
            np.testing.assert_allclose(np.linalg.det(c2w[:3, :3]), 1.0, atol=1e-6)
            # … so the GAN's discriminator reads the same yaw, at zero pitch.
            np.testing.assert_allclose(yaw_pitch_of(c2w, 0.0), [yaw, 0.0], atol=1e-6)
            # Intrinsics follow the pixels: ×32 then ÷2; the 48-wide image is cropped
            # 8 px on each side at 16 px (its focal lengths in pixels differ: fx/W = fy/H).
            fx = FOCAL * (48 if i == 3 else 32) / 2
            cx = 12.0 - 4.0 if i == 3 else 8.0
            np.testing.assert_allclose(got["intrinsics"][j], [[fx, 0, cx],
                                                              [0, FOCAL * 16, 8.0],
                                                              [0, 0, 1]], rtol=1e-6)
    assert "tensorflow" not in sys.modules


def test_a_folder_without_labels_is_a_clear_error(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="has no dataset.json at its root"):
        _build(tmp_path / "plain", tmp_path / "tfds", "plain")
    (tmp_path / "plain" / "dataset.json").write_text(json.dumps({"labels": None}))
    with pytest.raises(ValueError, match="has no camera labels"):
        _build(tmp_path / "plain", tmp_path / "tfds", "plain")
