"""TFDS data sources → grain pipelines for training and evaluation (no tensorflow).

Every function takes the data config (``config.data``). :func:`prepare` (called first,
by every process) builds the synthetic scenes on first use and checks that the dataset
and its splits exist (:class:`DataConfigError`, before anything compiles); the records come from
:mod:`.sources`, are decoded by :mod:`.preprocess` and skipped when bad by
:mod:`.bad_records`.

Training (grain tutorial / MaxText recipe)::

    MapDataset.source(src).seed(seed).shuffle().repeat()      # reshuffled every epoch
      [process_index::process_count]                          # this process's shard
      .map(decode + preprocess)   → to_iter_dataset()
      → skip & count bad records  → batch(local, drop_remainder=True)
      → mp_prefetch (worker_count > 0) → cumulative ``num_skipped`` in every batch

Batching happens after the iterator-level filter (a MapDataset cannot drop elements
without leaving holes in a batch). Evaluation reads each process's strided share in a
fixed order and pads the last batch, with a boolean ``mask`` (False on padding and on
bad records) and each slot's position in the split, ``index`` (int32), so every process
yields the same number of batches.

Images are read as encoded bytes (TFDS image decoding skipped) and decoded with PIL
(:mod:`.preprocess`) so that a corrupt record is a counted skip, not a crash. Outputs per example:
``image`` uint8 [S, S, 3], ``label`` int32 (0 when the dataset has none); with
``with_depth``, when the dataset has depth: ``depth`` float32 [S, S] (camera z-depth,
+inf = background; for pseudo-GT datasets from ``data/prepare_depth.py`` the reciprocal
of a monocular disparity, known up to scale and shift); with ``with_cameras`` (default:
``with_depth``), when the dataset has cameras (the synthetic scenes, EG3D-format
datasets): ``intrinsics`` [3, 3] (pixels, for the output size), ``cam_to_world``
[4, 4] (OpenCV frame); with ``with_novel_views``: ``novel_image``
[K, S, S, 3], ``novel_depth`` [K, S, S], ``novel_intrinsics`` [K, 3, 3],
``novel_cam_to_world`` [K, 4, 4], ``novel_yaw_pitch`` [K, 2] (radians).

With ``data.codes_dir`` set (VQ3D stage 2), training reads its split from that
precomputed codes dataset (``vq3d_jax/tools/precompute_codes.py``) instead, and each
example is ``codes`` int32 [L] and ``label`` int32; evaluation still reads images.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vq3d_jax.datasets import sources, synthetic_scenes
from vq3d_jax.datasets.bad_records import (
    MAX_CONSECUTIVE_BAD_RECORDS,
    BadRecord,
    CountSkipped,
    SkipBadRecords,
    preprocess_or_skip,
)
from vq3d_jax.datasets.preprocess import Options, options, setting
from vq3d_jax.datasets.sources import DataConfigError

# --------------------------------------------------------------------------- helpers


def _read_options(data: Any) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=int(setting(data, "read_threads", 4)),
        prefetch_buffer_size=int(setting(data, "read_buffer_size", 64)),
    )


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} is not in [0, process_count={count}).")
    return index, count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the "
            f"process count ({process_count}): each process loads an equal share."
        )
    return global_batch_size // process_count


def _maybe_prefetch(ds: grain.IterDataset, data: Any) -> grain.IterDataset:
    workers = int(setting(data, "worker_count", 0))
    if workers > 0:
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=workers,
                per_worker_buffer_size=int(setting(data, "prefetch_buffer_size", 2)),
            )
        )
    return ds


class _BatchRowsOfProcess(grain.MapDataset):
    """Process ``index``'s rows of each global batch of ``rows × count`` consecutive
    elements: its element k is the parent's (k // rows · count + index) · rows + k % rows.

    Global batch b is then parent[b·rows·count : (b+1)·rows·count] whatever ``count``,
    its process-local pieces stacked in process order (as ``sharding.global_batch`` puts
    them), so that a run resumed on another number of hosts reads the same examples.
    """

    def __init__(self, parent: grain.MapDataset, *, rows: int, index: int, count: int):
        super().__init__(parent)
        self._rows, self._index, self._count = rows, index, count

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def _parent_index(self, k: int) -> int:
        block, row = divmod(k, self._rows)
        return (block * self._count + self._index) * self._rows + row

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        return self._parent[self._parent_index(k)]

    def __str__(self) -> str:
        return f"_BatchRowsOfProcess(rows={self._rows}, {self._index} of {self._count})"


# --------------------------------------------------------------------------- prepare


def prepare(
    data: Any, *, splits: Sequence[str] | None = None, process_index: int | None = None,
    process_count: int | None = None,
) -> None:
    """Builds the synthetic scenes of ``data.name`` into ``data.data_dir`` on first use, then
    checks that ``data.name`` is prepared there with each of ``splits``.

    The one place that does: call it (every process) before reading the data, and before
    compiling, so that a wrong name, folder or split is a one-line DataConfigError (naming
    it and what exists) instead of a TFDS traceback minutes later. Process 0 builds, the
    others wait; any other dataset, or one already built, is left as it is.
    ``splits``: TFDS split specs the run reads (default ``data.train_split`` and
    ``data.eval_split``; empty: no check). ``process_index``, ``process_count``: default
    from jax.
    """
    index, count = _process_shard(process_index, process_count)
    data_dir = setting(data, "data_dir", "") or None
    if splits is None:
        splits = [setting(data, "train_split", "train"), setting(data, "eval_split", "validation")]
    if splits:
        _check_name_and_folder(data.name, data_dir)
    if index == 0:
        synthetic_scenes.ensure_built(data.name, data_dir)
    if count > 1:
        multihost_utils.sync_global_devices("dataset prepared")
    if splits:
        sources.check_prepared(data, splits, functools.partial(_available, data_dir))


def _synthetic_names() -> list[str]:
    return [f"{synthetic_scenes.NAME}/{c.name}"
            for c in synthetic_scenes.SyntheticScenes.BUILDER_CONFIGS]


def _available(data_dir: str | None) -> str:
    ours = _synthetic_names()
    prepared = [n for n in sources.prepared_datasets(data_dir) if n not in ours]
    return (f"available: {', '.join(ours)} (built on first use)"
            + (f", or prepared in data.data_dir: {', '.join(prepared)}" if prepared else "")
            + "; another TFDS dataset must be prepared in data.data_dir first "
            "(data/README.md).")


def _check_name_and_folder(name: str, data_dir: str | None) -> None:
    """What can be told before building: a synthetic-scenes config that does not exist,
    and a ``data_dir`` that does not exist for a dataset only a recipe can put there."""
    base, _, variant = name.split(":")[0].partition("/")
    if base == synthetic_scenes.NAME:
        if variant and f"{base}/{variant}" not in _synthetic_names():
            raise DataConfigError(f"unknown dataset data.name={name!r}; {_available(data_dir)}")
        return  # built into data_dir, which is created
    if data_dir and not os.path.isdir(data_dir):
        raise DataConfigError(
            f"data.data_dir={data_dir!r} does not exist: prepare data.name={name!r} there "
            "first (data/README.md), or point data.data_dir at the folder that holds it."
        )


# --------------------------------------------------------------------------- maps


def _train_map(record: dict, rng: np.random.Generator, *, opts: Options):
    flip = opts.random_flip and bool(rng.random() < 0.5)
    return preprocess_or_skip(record, opts, flip)


def _codes_map(record: dict, *, vocab_size: int | None) -> dict | BadRecord:
    """A codes record → ``codes`` int32 [L], ``label`` int32; out-of-vocabulary: a skip."""
    codes = np.asarray(record["codes"])
    if codes.ndim != 1 or (codes.size and (codes.min() < 0 or (
            vocab_size is not None and codes.max() >= vocab_size))):
        reason = f"codes of shape {codes.shape} outside [0, {vocab_size})"
        logging.warning("Skipping a bad record: %s", reason)
        return BadRecord(reason)
    return {"codes": codes.astype(np.int32), "label": np.int32(record.get("label", 0))}


# --------------------------------------------------------------------------- train


def create_train_iterator(
    data: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    source: Sequence[dict] | None = None,
    codes_length: int | None = None,
    codes_vocab_size: int | None = None,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's training batches.

    Args:
      data: the data config (``config.data``).
      global_batch_size: examples per step over all processes.
      seed: shuffling (reshuffled every epoch) and random-flip seed.
      process_index, process_count: this process's shard; default from jax.
      source: a random-access source of raw records (as TFDS returns them with image
        decoding skipped); default ``tfds.data_source(data.name, data.train_split)``.
        With ``data.codes_dir``, records of codes (``codes``, ``label``).
      codes_length, codes_vocab_size: with ``data.codes_dir``, what the model expects:
        a codes dataset of another length or vocabulary is an error (checked when
        given); ``data.image_size`` must equal the codes' image size.

    Returns:
      A grain DatasetIterator of dicts of numpy arrays with leading dim
      global_batch_size // process_count, plus ``num_skipped`` (int64 scalar: bad
      records skipped since the start of the run). ``get_state()``/``set_state()``
      resume exactly, the skip count included. With ``data.codes_dir``: ``codes``
      int32 [B, L] and ``label`` int32 [B] (no images).
    """
    index, count = _process_shard(process_index, process_count)
    local = _local_batch_size(global_batch_size, count)
    codes_dir = setting(data, "codes_dir", "")
    split = setting(data, "train_split", "train")
    if codes_dir:
        vocab = codes_vocab_size
        if source is None:
            source, meta = sources.open_codes_source(
                codes_dir, split, length=codes_length, vocab_size=codes_vocab_size,
                image_size=int(setting(data, "image_size", 64)))
            vocab = int(meta["vocab_size"])
        example_map = functools.partial(_codes_map, vocab_size=vocab)
    else:
        if source is None:
            source = sources.open_source(data, split)
        opts = options(data, train=True)
        example_map = functools.partial(_train_map, opts=opts)
    if len(source) == 0:
        raise ValueError("The training source is empty.")
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    # Random flips drawn by global position, then each process takes its rows of every
    # global batch: the global batches do not depend on the number of processes.
    ds = ds.map(example_map) if codes_dir else ds.random_map(example_map)
    ds = _BatchRowsOfProcess(ds, rows=local, index=index, count=count)
    it = SkipBadRecords(ds.to_iter_dataset(_read_options(data)))
    it = _maybe_prefetch(it.batch(local, drop_remainder=True), data)
    return iter(CountSkipped(it))


# --------------------------------------------------------------------------- eval


class EvalBatches:
    """A re-iterable sequence of eval batches; ``len()`` is the (per-process) batch count.

    Every iteration starts from the first batch. Batches carry ``mask`` (bool [B]:
    False on padding and on skipped bad records) and ``num_skipped``.
    """

    def __init__(self, dataset: grain.IterDataset | None, num_batches: int, num_examples: int):
        self._dataset = dataset
        self.num_batches = num_batches
        self.num_examples = num_examples  # over all processes, before padding

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        return iter(self._dataset) if self._dataset is not None else iter(())


def _eval_element(
    j: int, *, source, num_examples: int, index: int, count: int, opts: Options, pad: dict
) -> dict:
    g = index + j * count  # strided share: process p reads p, p + count, ...
    if g >= num_examples:
        out = {**pad, "mask": np.bool_(False), "_skipped": np.int64(0)}
    else:
        example = preprocess_or_skip(source[g], opts)
        if isinstance(example, BadRecord):
            out = {**pad, "mask": np.bool_(False), "_skipped": np.int64(1)}
        else:
            out = {**example, "mask": np.bool_(True), "_skipped": np.int64(0)}
    return {**out, "index": np.int32(g)}


def _padding_example(source, num_examples: int, opts: Options) -> dict:
    """Zeros shaped like a real example (the first one that decodes)."""
    for g in range(min(num_examples, MAX_CONSECUTIVE_BAD_RECORDS)):
        example = preprocess_or_skip(source[g], opts)
        if not isinstance(example, BadRecord):
            return {k: np.zeros_like(v) for k, v in example.items()}
    raise RuntimeError("No record of the evaluation source decodes; is it corrupt?")


def create_eval_iterator(
    data: Any,
    *,
    split: str | None = None,
    global_batch_size: int,
    num_examples: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    source: Sequence[dict] | None = None,
) -> EvalBatches:
    """Fixed-order, padded and masked evaluation batches of this process's share.

    Process p reads examples p, p + P, p + 2P, ... (P processes) of the first
    ``num_examples`` (default: all) of ``split`` (default ``data.eval_split``). All
    processes yield the same number of batches of global_batch_size // P examples; the
    padding at the end has ``mask`` False, so every example is counted exactly once
    over all processes. A bad record becomes a masked-out slot and is counted in
    ``num_skipped``. ``data``: the data config (``config.data``).
    """
    index, count = _process_shard(process_index, process_count)
    local = _local_batch_size(global_batch_size, count)
    if source is None:
        source = sources.open_source(data, split or setting(data, "eval_split", "validation"))
    n = len(source) if num_examples is None else min(int(num_examples), len(source))
    num_batches = math.ceil(math.ceil(n / count) / local) if n > 0 else 0
    if num_batches == 0:
        return EvalBatches(None, 0, n)
    opts = options(data, train=False)
    element = functools.partial(
        _eval_element,
        source=source,
        num_examples=n,
        index=index,
        count=count,
        opts=opts,
        pad=_padding_example(source, n, opts),
    )
    ds = grain.MapDataset.range(num_batches * local).map(element).batch(local)
    it = _maybe_prefetch(ds.to_iter_dataset(_read_options(data)), data)
    return EvalBatches(CountSkipped(it), num_batches, n)
