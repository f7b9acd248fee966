"""The TFDS builder: build `mini` once, read it back without tensorflow."""

import io
import os
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vq3d_jax.datasets import pipeline, raycast, scenes, synthetic_scenes

NAME = "synthetic_scenes/mini"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds_scenes"))
    pipeline.prepare(ml_collections.ConfigDict({"name": NAME, "data_dir": path}))
    return path


def test_no_tensorflow_needed(data_dir):
    del data_dir
    assert "tensorflow" not in sys.modules


def test_splits_and_order(data_dir):
    sizes = {"train": 128, "validation": 32, "test": 32}
    for split, n in sizes.items():
        src = tfds.data_source(NAME, split=split, data_dir=data_dir)
        assert len(src) == n
    src = tfds.data_source(NAME, split="validation", data_dir=data_dir)
    assert [src[i]["id"] for i in range(len(src))] == list(range(32))  # generation order


def test_example_shapes_dtypes_and_ranges(data_dir):
    src = tfds.data_source(NAME, split="train", data_dir=data_dir)
    labels = set()
    for i in range(0, 128, 9):
        ex = src[i]
        assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
        assert ex["depth"].shape == (32, 32) and ex["depth"].dtype == np.float32
        assert (ex["depth"] > 0).all() and np.isinf(ex["depth"]).any()
        assert np.isfinite(ex["depth"]).mean() > 0.5
        assert ex["intrinsics"].shape == (3, 3) and ex["cam_to_world"].shape == (4, 4)
        np.testing.assert_allclose(ex["intrinsics"][:2, 2], [16.0, 16.0])
        rot = ex["cam_to_world"][:3, :3]
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-5)
        assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-5)
        assert ex["scene_center"].shape == (3,)
        assert 0 <= ex["label"] < scenes.NUM_CLASSES
        labels.add(int(ex["label"]))
        nv = ex["novel_views"]
        assert len(nv["image"]) == scenes.NUM_NOVEL_VIEWS
        assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in nv["image"])
        assert all(d.shape == (32, 32) and d.dtype == np.float32 for d in nv["depth"])
    assert len(labels) >= 3  # classes are mixed


def test_novel_cameras_are_the_canonical_one_orbited_by_the_stored_offsets(data_dir):
    src = tfds.data_source(NAME, split="test", data_dir=data_dir)
    up = np.array([0.0, -1.0, 0.0])

    def rot(axis, a):  # Rodrigues, written independently of the library
        axis = axis / np.linalg.norm(axis)
        cross = np.cross(np.eye(3), axis)  # the matrix of v -> axis x v
        return np.cos(a) * np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * np.outer(axis, axis)

    for i in (0, 5, 17):
        ex = src[i]
        c2w, pivot = ex["cam_to_world"].astype(np.float64), ex["scene_center"].astype(np.float64)
        yaw_pitch = np.stack(ex["novel_views"]["yaw_pitch"])
        np.testing.assert_allclose(yaw_pitch, np.deg2rad(scenes.NOVEL_VIEW_OFFSETS_DEG), atol=1e-6)
        for (yaw, pitch), novel in zip(yaw_pitch, ex["novel_views"]["cam_to_world"]):
            r = rot(up, yaw) @ rot(c2w[:3, 0], pitch)
            np.testing.assert_allclose(novel[:3, :3], r @ c2w[:3, :3], atol=1e-5)
            np.testing.assert_allclose(novel[:3, 3], pivot + r @ (c2w[:3, 3] - pivot), atol=1e-4)
            np.testing.assert_allclose(novel[3], [0, 0, 0, 1])


def test_records_match_the_generator(data_dir):
    decoders = {"image": tfds.decode.SkipDecoding()}
    src = tfds.data_source(NAME, split="validation", data_dir=data_dir, decoders=decoders)
    for i in (3, 30):
        stored, ref = src[i], raycast.generate_example("validation", i, 32)
        # Lossless PNG: the decoded bytes are the rendered pixels.
        np.testing.assert_array_equal(
            np.asarray(Image.open(io.BytesIO(stored["image"]))), ref["image"]
        )
        np.testing.assert_array_equal(stored["depth"], ref["depth"])  # inf survives zlib
        np.testing.assert_array_equal(stored["cam_to_world"], ref["cam_to_world"])
        np.testing.assert_array_equal(stored["scene_center"], ref["scene_center"])
        assert stored["label"] == ref["label"]
        np.testing.assert_array_equal(
            np.stack(stored["novel_views"]["depth"]), ref["novel_views"]["depth"]
        )


def test_ensure_built_is_a_no_op_when_built_or_not_ours(data_dir, tmp_path):
    record = os.path.join(data_dir, "synthetic_scenes", "mini", "1.0.0")
    before = {f: os.path.getmtime(os.path.join(record, f)) for f in os.listdir(record)}
    synthetic_scenes.ensure_built(NAME, data_dir)
    after = {f: os.path.getmtime(os.path.join(record, f)) for f in os.listdir(record)}
    assert before == after
    synthetic_scenes.ensure_built("imagenet2012", str(tmp_path))  # not ours: untouched
    assert os.listdir(tmp_path) == []
