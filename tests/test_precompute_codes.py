"""Precomputed stage-2 codes: exact vs. on-the-fly encoding, the codes train iterator,
mismatch errors, and all-or-nothing writing."""

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import override

from configs import vq3d_stage2
from vq3d_jax.datasets import pipeline, sources
from vq3d_jax.tools import precompute_codes as pc
from vq3d_jax.train import sharding

BATCH = 8


def _stage2_config(stage1_dir, data_dir):
    config = override(vq3d_stage2.get_config("tiny"), {
        "stage1.workdir": str(stage1_dir), "data.name": "synthetic_scenes/mini",
        "data.data_dir": data_dir, "data.image_size": 32, "global_batch_size": BATCH,
        "eval.global_batch_size": BATCH,
    })
    config.mesh.update(data=2, fsdp=2, tensor=2)
    return config


@pytest.fixture(scope="module")
def written(tmp_path_factory, stage1_workdir, mini_data_dir):
    """The mini train and validation splits encoded into a codes dataset."""
    rt, state, stage1_step = pc.load_stage1(_stage2_config(stage1_workdir, mini_data_dir))
    out = str(tmp_path_factory.mktemp("codes") / "mini_codes")
    meta = pc.precompute(rt, state, stage1_step, out, ("train", "validation"))
    return rt, state, out, meta


def _read_all(out, split):
    source = tfds.builder_from_directory(out).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_codes_equal_encode_step_on_the_same_images(written, mini_data_dir):
    rt, state, out, meta = written
    task = rt.task
    assert meta["splits"] == {"train": {"num_examples": 128, "num_skipped": 0},
                              "validation": {"num_examples": 32, "num_skipped": 0}}
    info = tfds.builder_from_directory(out).info
    assert info.file_format.value == "array_record"
    stored = dict(info.metadata)
    assert stored["splits"] == meta["splits"]  # stats filled in while writing are saved
    assert (stored["vocab_size"], stored["length"], stored["stage1_step"]) == (64, 16, 0)
    assert stored["stage1_workdir"] == os.path.abspath(task.stage1_workdir)
    assert "step 0" in info.description

    records = _read_all(out, "validation")
    assert [int(r["id"]) for r in records] == list(range(32))  # all of them, in order
    direct = rt.compiled("direct_encode", task.encode_step)
    batches = pipeline.create_eval_iterator(rt.config.data, split="validation",
                                            global_batch_size=BATCH)
    expected_codes, expected_labels = [], []
    with rt.scope():
        for local in batches:
            batch = sharding.global_batch({k: local[k] for k in ("image", "label")}, rt.mesh)
            got = jax.device_get(direct(state, batch))
            expected_codes.append(got["codes"])
            expected_labels.append(got["label"])
    codes = np.stack([r["codes"] for r in records])
    assert codes.dtype == np.int32 and codes.shape == (32, task.length)
    np.testing.assert_array_equal(codes, np.concatenate(expected_codes))
    np.testing.assert_array_equal([r["label"] for r in records],
                                  np.concatenate(expected_labels))
    assert len(np.unique(codes)) > 1  # real codes, not a constant


def test_bad_source_records_are_skipped_and_counted(written):
    rt, state, out, _ = written
    source = sources.open_source(rt.config.data, "validation")
    records = [dict(source[i]) for i in range(12)]
    records[5]["image"] = b"\x89PNG\r\n\x1a\n garbage, not an image"
    batches = pipeline.create_eval_iterator(rt.config.data, global_batch_size=BATCH,
                                            source=records)
    stats = {}
    got = list(pc.encoded_examples(rt, state, batches, stats=stats))
    assert stats == {"num_examples": 11, "num_skipped": 1}
    assert [int(r["id"]) for r in got] == [i for i in range(12) if i != 5]
    stored = {int(r["id"]): r["codes"] for r in _read_all(out, "validation")}
    for r in got:
        np.testing.assert_array_equal(r["codes"], stored[int(r["id"])])


def test_train_iterator_reads_codes_and_resumes(written):
    rt, _, out, _ = written
    data = rt.config.data.copy_and_resolve_references()
    data.codes_dir = out
    make = lambda: pipeline.create_train_iterator(
        data, global_batch_size=BATCH, seed=0, codes_length=rt.task.length,
        codes_vocab_size=rt.task.vocab_size)
    it = make()
    first = next(it)
    assert {k: (v.shape, v.dtype) for k, v in first.items()} == {
        "codes": ((BATCH, 16), np.int32), "label": ((BATCH,), np.int32),
        "num_skipped": ((), np.int64)}
    state = it.get_state()
    batches = [next(it) for _ in range(3)]
    written_pairs = {(tuple(r["codes"]), int(r["label"])) for r in _read_all(out, "train")}
    for b in [first, *batches]:
        for codes, label in zip(b["codes"], b["label"]):
            assert (tuple(codes), int(label)) in written_pairs
    resumed = make()
    resumed.set_state(state)
    for a in batches:
        b = next(resumed)
        np.testing.assert_array_equal(a["codes"], b["codes"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_codes_that_do_not_fit_the_model_are_clear_errors(written, tmp_path):
    rt, _, out, _ = written
    data = rt.config.data.copy_and_resolve_references()
    data.codes_dir = out
    make = lambda data, **kw: pipeline.create_train_iterator(
        data, global_batch_size=BATCH, seed=0, **kw)
    with pytest.raises(ValueError, match=r"length 16 \(stored\) != 64 \(model\)"):
        make(data, codes_length=64, codes_vocab_size=64)
    with pytest.raises(ValueError, match=r"vocab_size 64 \(stored\) != 512"):
        make(data, codes_length=16, codes_vocab_size=512)
    wrong_size = data.copy_and_resolve_references()
    wrong_size.image_size = 64
    with pytest.raises(ValueError, match=r"image_size 32 \(stored\) != 64"):
        make(wrong_size)
    data.codes_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="--mode=codes"):
        make(data)


def test_writing_is_all_or_nothing_and_never_overwrites(tmp_path):
    out = tmp_path / "codes"
    meta = {"format": pc.CODES_FORMAT, "vocab_size": 8, "length": 3, "image_size": 32}

    def examples(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("interrupted")
            yield {"id": i, "codes": np.full(3, i % 8, np.int32), "label": i}

    with pytest.raises(RuntimeError, match="interrupted"):
        pc.write_codes_dataset(str(out), {"train": examples(10, fail_at=5)}, length=3,
                               metadata=meta)
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary folder

    pc.write_codes_dataset(str(out), {"train": examples(4)}, length=3, metadata=meta)
    with pytest.raises(FileExistsError, match="--overwrite"):
        pc.write_codes_dataset(str(out), {"train": examples(6)}, length=3, metadata=meta)
    assert len(_read_all(str(out), "train")) == 4
    pc.write_codes_dataset(str(out), {"train": examples(6)}, length=3, metadata=meta,
                           overwrite=True)
    assert [int(r["id"]) for r in _read_all(str(out), "train")] == list(range(6))
    assert os.listdir(tmp_path) == ["codes"]
