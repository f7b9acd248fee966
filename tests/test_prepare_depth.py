"""data/prepare_depth.py: pseudo-GT depth dataset written, read back by the pipeline."""

import importlib.util
import pathlib
import sys

import ml_collections
import numpy as np
import pytest

from vq3d_jax.datasets import pipeline, preprocess, sources

_PATH = pathlib.Path(__file__).resolve().parents[1] / "data" / "prepare_depth.py"
_spec = importlib.util.spec_from_file_location("prepare_depth", _PATH)
prepare_depth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_depth)

SIZE = 24  # the 32² scenes are resized and cropped on the way in
N = 8  # examples per split


def disparity(images: np.ndarray) -> np.ndarray:
    """A deterministic stand-in for DPT, with zero and negative columns (→ +inf depth)."""
    d = images.astype(np.float32).mean(-1) / 255.0 + 0.5
    d[:, :, :3] = 0.0
    d[:, :, 3:5] = -1.0
    return d


def wrong_shape(images: np.ndarray) -> np.ndarray:
    return np.ones((len(images), 8, 8), np.float32)


def not_finite(images: np.ndarray) -> np.ndarray:
    d = disparity(images)
    d[0, 5, 7] = np.nan
    return d


def _run(data_dir: str, name: str, fn: str, splits: str = "train,validation") -> dict:
    return prepare_depth.main(
        [
            "--source=synthetic_scenes/mini",
            f"--data_dir={data_dir}",
            f"--splits={splits}",
            f"--depth_fn={__name__}:{fn}",
            f"--output_name={name}",
            "--batch_size=4",
            f"--image_size={SIZE}",
            f"--max_examples={N}",
        ]
    )


def _config(name: str, data_dir: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": name,
            "data_dir": data_dir,
            "image_size": SIZE,
            "worker_count": 0,
            "with_depth": True,
            "with_novel_views": False,
        }
    )


def _batch(name: str, data_dir: str, split: str) -> dict:
    (batch,) = pipeline.create_eval_iterator(
        _config(name, data_dir),
        split=split,
        global_batch_size=N,
        num_examples=N,
        process_index=0,
        process_count=1,
    )
    return batch


def test_depth_dataset_reads_back_through_the_pipeline(mini_data_dir):
    counts = _run(mini_data_dir, "mini_depth", "disparity")
    assert counts == {"train": (N, 0), "validation": (N, 0)}
    for split in ("train", "validation"):
        got = _batch("mini_depth", mini_data_dir, split)
        source = _batch("synthetic_scenes/mini", mini_data_dir, split)
        assert set(got) == {"image", "label", "depth", "index", "mask", "num_skipped"}  # no camera
        assert got["depth"].shape == (N, SIZE, SIZE) and got["depth"].dtype == np.float32
        assert got["mask"].all()
        # The source's crops (PNG is lossless) and labels, in the source's order.
        np.testing.assert_array_equal(got["image"], source["image"])
        np.testing.assert_array_equal(got["label"], source["label"])
        d = disparity(got["image"])
        expected = np.where(d > 0, np.float32(1.0) / np.where(d > 0, d, 1.0), np.inf)
        np.testing.assert_array_equal(got["depth"], expected)
        assert np.isinf(got["depth"][:, :, :5]).all() and np.isfinite(got["depth"][:, :, 5:]).all()
    assert "tensorflow" not in sys.modules


def test_depth_without_camera_flips_with_the_image(mini_data_dir):
    _run(mini_data_dir, "mini_depth_flip", "disparity", splits="train")
    record = sources.open_source(_config("mini_depth_flip", mini_data_dir), "train")[0]
    opts = preprocess.options(_config("mini_depth_flip", mini_data_dir), train=True)
    plain = preprocess.preprocess(record, opts, flip=False)
    flipped = preprocess.preprocess(record, opts, flip=True)
    assert set(flipped) == {"image", "label", "depth"}
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["depth"], plain["depth"][:, ::-1])


def test_bad_source_records_are_skipped_and_counted(mini_data_dir, monkeypatch, capsys):
    real = sources.open_source

    def corrupt_second_record(cfg, split):
        src = real(cfg, split)
        return [{**src[i], "image": b"not an image"} if i == 1 else src[i] for i in range(N)]

    monkeypatch.setattr(sources, "open_source", corrupt_second_record)
    assert _run(mini_data_dir, "mini_depth_bad", "disparity", splits="train") == {
        "train": (N - 1, 1)
    }
    assert "mini_depth_bad/train: 7 examples, 1 bad records skipped" in capsys.readouterr().out
    monkeypatch.undo()
    got = _batch("mini_depth_bad", mini_data_dir, "train")
    source = _batch("synthetic_scenes/mini", mini_data_dir, "train")
    assert got["mask"].tolist() == [True] * (N - 1) + [False]  # 7 records, padded to 8
    np.testing.assert_array_equal(got["image"][: N - 1], source["image"][[0, *range(2, N)]])


@pytest.mark.parametrize(
    "fn, message",
    [
        ("wrong_shape", r"returned shape \(4, 8, 8\) for images of shape \(4, 24, 24, 3\)"),
        ("not_finite", r"returned 1 non-finite values"),
    ],
)
def test_a_bad_depth_fn_is_a_clear_error(mini_data_dir, fn, message):
    with pytest.raises(ValueError, match=rf"--depth_fn={__name__}:{fn} {message}"):
        _run(mini_data_dir, f"mini_depth_{fn}", fn, splits="validation")
