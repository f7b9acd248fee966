"""grain pipelines: shapes, exact resume, process shards, padded eval, bad records, flips."""

import functools
import sys

import ml_collections
import numpy as np
import pytest

from vq3d_jax.datasets import cameras_np, pipeline, preprocess, raycast, scenes, synthetic_scenes

RES = 32


def _config(**overrides):
    cfg = ml_collections.ConfigDict(
        {
            "name": "synthetic_scenes/mini",
            "data_dir": "",
            "train_split": "train",
            "eval_split": "validation",
            "image_size": RES,
            "random_flip": False,
            "worker_count": 0,
            "prefetch_buffer_size": 2,
            "with_depth": True,
            "with_novel_views": False,
        }
    )
    cfg.update(overrides)
    return cfg


def _record(i: int) -> dict:
    """A raw record as tfds.data_source returns it with image decoding skipped.

    ``label`` is the record's index here, so that tests can tell examples apart.
    """
    ex = synthetic_scenes.to_tfds_example(raycast.generate_example("test", i % 8, RES), i)
    ex["label"] = i
    nv = ex["novel_views"]
    ex["novel_views"] = {
        "image": np.array(nv["image"], dtype=object),
        **{k: list(nv[k]) for k in ("depth", "intrinsics", "cam_to_world", "yaw_pitch")},
    }
    return ex


@functools.cache
def _records(n: int) -> tuple:
    return tuple(_record(i) for i in range(n))


def _source(n: int, bad=()):
    records = [dict(r) for r in _records(n)]
    for i in bad:
        records[i]["image"] = b"\x89PNG\r\n\x1a\n garbage, not an image"
    return records


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batch_shapes_and_dtypes():
    cfg = _config(image_size=24, with_novel_views=True)
    it = pipeline.create_train_iterator(
        cfg, global_batch_size=4, seed=0, process_index=0, process_count=1, source=_source(8)
    )
    b = next(it)
    k = scenes.NUM_NOVEL_VIEWS
    expected = {
        "image": ((4, 24, 24, 3), np.uint8),
        "label": ((4,), np.int32),
        "depth": ((4, 24, 24), np.float32),
        "intrinsics": ((4, 3, 3), np.float32),
        "cam_to_world": ((4, 4, 4), np.float32),
        "novel_image": ((4, k, 24, 24, 3), np.uint8),
        "novel_depth": ((4, k, 24, 24), np.float32),
        "novel_intrinsics": ((4, k, 3, 3), np.float32),
        "novel_cam_to_world": ((4, k, 4, 4), np.float32),
        "novel_yaw_pitch": ((4, k, 2), np.float32),
        "num_skipped": ((), np.int64),
    }
    assert {key: (v.shape, v.dtype) for key, v in b.items()} == expected
    # 32 -> 24: focal length and principal point scale by 3/4.
    k32 = cameras_np.intrinsics_from_fov(scenes.FOV_DEG, RES, RES)
    np.testing.assert_allclose(b["intrinsics"][0], np.diag([0.75, 0.75, 1.0]) @ k32, rtol=1e-6)
    assert np.isinf(b["depth"]).any() and np.isfinite(b["depth"]).any()
    assert "tensorflow" not in sys.modules


def test_config_without_depth_yields_image_and_label_only():
    cfg = _config(with_depth=False)
    it = pipeline.create_train_iterator(
        cfg, global_batch_size=2, seed=0, process_index=0, process_count=1, source=_source(4)
    )
    assert set(next(it)) == {"image", "label", "num_skipped"}


def test_global_batch_must_divide_over_processes():
    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.create_train_iterator(
            _config(),
            global_batch_size=5,
            seed=0,
            process_index=0,
            process_count=2,
            source=_source(4),
        )


def test_exact_resume_with_random_flips():
    cfg = _config(random_flip=True)
    make = lambda: pipeline.create_train_iterator(
        cfg, global_batch_size=3, seed=7, process_index=0, process_count=1, source=_source(10)
    )
    it = make()
    _take(it, 4)  # crosses an epoch boundary (10 examples)
    state = it.get_state()
    expected = _take(it, 5)
    resumed = make()
    resumed.set_state(state)
    for a, b in zip(expected, _take(resumed, 5)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # A fresh iterator without the state would not continue there.
    assert not np.array_equal(_take(make(), 1)[0]["label"], expected[0]["label"])


def test_epochs_are_reshuffled_and_complete():
    it = pipeline.create_train_iterator(
        _config(),
        global_batch_size=4,
        seed=0,
        process_index=0,
        process_count=1,
        source=_source(8),
    )
    epochs = [np.concatenate([b["label"] for b in _take(it, 2)]) for _ in range(3)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(8))
    assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])


def test_process_shards_stack_into_the_one_process_batches():
    """Each process reads its rows of every global batch: stacked in process order they
    are the one-process batches, random flips included, so a run resumed on another
    number of hosts sees the same data."""
    src = _source(16)
    config = _config(random_flip=True)

    def batches(index, count, config=config):
        it = pipeline.create_train_iterator(
            config, global_batch_size=8, seed=3, process_index=index, process_count=count,
            source=src)
        return _take(it, 3)  # 1.5 epochs

    whole = batches(0, 1)
    halves = [batches(index, 2) for index in range(2)]
    assert all(b["image"].shape[0] == 4 for half in halves for b in half)
    for step, batch in enumerate(whole):
        for key in ("label", "image", "cam_to_world"):
            stacked = np.concatenate([half[step][key] for half in halves])
            np.testing.assert_array_equal(stacked, batch[key], f"{key} of batch {step}")
    unflipped = batches(0, 1, _config())
    assert any(not np.array_equal(a["image"], b["image"])  # some examples were flipped
               for a, b in zip(whole, unflipped))
    assert sorted(np.concatenate([b["label"] for b in whole[:2]]).tolist()) == list(range(16))


def test_eval_pads_masks_and_covers_every_example_once():
    src = _source(30)
    per_process = []
    for index in range(2):
        batches = pipeline.create_eval_iterator(
            _config(), global_batch_size=8, process_index=index, process_count=2, source=src
        )
        out = list(batches)
        assert len(out) == len(batches) == 4  # ceil(ceil(30 / 2) / 4)
        assert all(b["image"].shape[0] == 4 and b["mask"].dtype == bool for b in out)
        labels = np.concatenate([b["label"] for b in out])
        mask = np.concatenate([b["mask"] for b in out])
        assert not mask[-1]  # 15 examples in 16 slots: the last one is padding
        per_process.append(labels[mask].tolist())
        assert list(batches)[0]["label"].tolist() == out[0]["label"].tolist()  # re-iterable
    everything = sorted(per_process[0] + per_process[1])
    assert everything == list(range(30))
    assert per_process[0] == list(range(0, 30, 2))  # fixed, strided order


def test_eval_num_examples_caps_the_count():
    batches = pipeline.create_eval_iterator(
        _config(),
        split="test",
        global_batch_size=4,
        num_examples=6,
        process_index=0,
        process_count=1,
        source=_source(10),
    )
    out = list(batches)
    assert len(out) == 2
    labels = np.concatenate([b["label"] for b in out])[np.concatenate([b["mask"] for b in out])]
    assert labels.tolist() == list(range(6))


def test_bad_records_are_skipped_counted_and_the_count_resumes():
    src = _source(8, bad=(2, 5))
    src[6] = {**src[6], "depth": np.zeros((3, 3), np.float32)}  # wrong shape
    make = lambda: pipeline.create_train_iterator(
        _config(), global_batch_size=2, seed=1, process_index=0, process_count=1, source=src
    )
    it = make()
    first = _take(it, 5)  # 10 good examples: past the end of the first epoch
    counts = [int(b["num_skipped"]) for b in first]
    assert counts == sorted(counts) and counts[-1] >= 3  # cumulative; 3 bad per epoch
    assert all(int(x) not in (2, 5, 6) for b in first for x in b["label"])
    state = it.get_state()
    expected = _take(it, 4)
    resumed = make()
    resumed.set_state(state)
    got = _take(resumed, 4)
    assert [int(b["num_skipped"]) for b in got] == [int(b["num_skipped"]) for b in expected]
    assert int(got[-1]["num_skipped"]) > counts[-1]  # still counting after the restore
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_bad_records_in_eval_are_masked_and_counted():
    batches = pipeline.create_eval_iterator(
        _config(),
        global_batch_size=4,
        process_index=0,
        process_count=1,
        source=_source(6, bad=(0, 3)),
    )
    out = list(batches)
    mask = np.concatenate([b["mask"] for b in out])
    labels = np.concatenate([b["label"] for b in out])
    assert labels[mask].tolist() == [1, 2, 4, 5]
    assert int(out[-1]["num_skipped"]) == 2


def _project(x, k, c2w):
    cam = (x - c2w[:3, 3]) @ c2w[:3, :3]
    uvw = cam @ k.T
    return uvw[..., :2] / uvw[..., 2:]


def test_flip_mirrors_image_depth_and_camera_consistently():
    record = _records(3)[2]
    opts = preprocess.options(_config(with_novel_views=True), train=True)
    plain = preprocess.preprocess(record, opts, flip=False)
    flipped = preprocess.preprocess(record, opts, flip=True)
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["depth"], plain["depth"][:, ::-1])
    c2w, fc2w = plain["cam_to_world"].astype(np.float64), flipped["cam_to_world"].astype(np.float64)
    assert np.linalg.det(fc2w[:3, :3]) == pytest.approx(1.0, abs=1e-5)  # still right-handed
    # A world point X at pixel (u, v); its mirror D X is at (W - u, v) in the flipped view.
    rng = np.random.default_rng(0)
    x = (
        c2w[:3, 3]
        + (
            c2w[:3, :3]
            @ np.stack([rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20), rng.uniform(3, 9, 20)])
        ).T
    )
    mirror = x * np.array([-1.0, 1.0, 1.0])
    uv = _project(x, plain["intrinsics"], c2w)
    fuv = _project(mirror, flipped["intrinsics"], fc2w)
    np.testing.assert_allclose(fuv, np.stack([RES - uv[:, 0], uv[:, 1]], -1), atol=1e-3)
    # Novel views flip the same way, and their yaw offsets negate.
    np.testing.assert_array_equal(flipped["novel_image"], plain["novel_image"][:, :, ::-1])
    np.testing.assert_allclose(
        flipped["novel_yaw_pitch"], plain["novel_yaw_pitch"] * np.array([-1.0, 1.0])
    )
    # The flipped novel camera is the flipped canonical one orbited by the flipped offsets
    # about the mirrored pivot.
    pivot = record["scene_center"].astype(np.float64) * np.array([-1.0, 1.0, 1.0])
    for (yaw, pitch), cam in zip(flipped["novel_yaw_pitch"], flipped["novel_cam_to_world"]):
        np.testing.assert_allclose(cam, cameras_np.orbit(fc2w, pivot, yaw, pitch), atol=1e-4)


def test_tfds_source_end_to_end(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_pipeline"))
    cfg = _config(data_dir=data_dir, with_novel_views=True, image_size=16)
    pipeline.prepare(cfg, process_index=0, process_count=1)  # builds the scenes
    it = pipeline.create_train_iterator(
        cfg, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    b = next(it)
    assert b["image"].shape == (4, 16, 16, 3) and b["novel_image"].shape[:2] == (4, 6)
    assert int(b["num_skipped"]) == 0
    batches = pipeline.create_eval_iterator(
        cfg, global_batch_size=10, process_index=0, process_count=1
    )
    assert len(batches) == 4 and sum(int(b["mask"].sum()) for b in batches) == 32
    assert "tensorflow" not in sys.modules
