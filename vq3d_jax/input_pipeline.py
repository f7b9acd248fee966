"""TFDS data sources → grain pipelines for training and evaluation (no tensorflow).

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

Images are read as encoded bytes (TFDS image decoding skipped) and decoded here with
PIL so that a corrupt record is a counted skip, not a crash. Outputs per example:
``image`` uint8 [S, S, 3], ``label`` int32 (0 when the dataset has none); with
``with_depth``, when the dataset has depth: ``depth`` float32 [S, S] (camera z-depth,
+inf = background; for pseudo-GT datasets from ``data/prepare_depth.py`` the reciprocal
of a monocular disparity, known up to scale and shift), and when it also has cameras
(the synthetic scenes): ``intrinsics`` [3, 3] (pixels, for the output size),
``cam_to_world`` [4, 4] (OpenCV frame); with ``with_novel_views``: ``novel_image``
[K, S, S, 3], ``novel_depth`` [K, S, S], ``novel_intrinsics`` [K, 3, 3],
``novel_cam_to_world`` [K, 4, 4], ``novel_yaw_pitch`` [K, 2] (radians).

With ``data.codes_dir`` set (VQ3D stage 2), training reads its split from that
precomputed codes dataset (``vq3d_jax/tools/precompute_codes.py``) instead, and each
example is ``codes`` int32 [L] and ``label`` int32; evaluation still reads images.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from vq3d_jax.datasets import synthetic_scenes

# Reflection of the world x axis (and of the camera x axis): the camera of a
# horizontally flipped image is D @ c2w @ D, still a proper right-handed rotation.
FLIP_X = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)
# A source whose records all fail would otherwise spin forever on a repeated dataset.
MAX_CONSECUTIVE_BAD_RECORDS = 1000


# --------------------------------------------------------------------------- config


def _data_config(cfg: Any) -> Any:
    """Accepts the whole experiment config (uses ``cfg.data``) or its ``data`` part."""
    try:
        return cfg["data"] if "data" in cfg else cfg
    except TypeError:
        return getattr(cfg, "data", cfg)


def _get(cfg: Any, key: str, default: Any) -> Any:
    try:
        value = cfg.get(key, default)
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class _Options:
    """What the per-example preprocessing needs (picklable, for worker processes)."""

    image_size: int
    with_depth: bool
    with_novel_views: bool
    random_flip: bool


def _options(cfg: Any, *, train: bool) -> _Options:
    return _Options(
        image_size=int(_get(cfg, "image_size", 64)),
        with_depth=bool(_get(cfg, "with_depth", True)),
        with_novel_views=bool(_get(cfg, "with_novel_views", False)),
        random_flip=train and bool(_get(cfg, "random_flip", False)),
    )


def _read_options(cfg: Any) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=int(_get(cfg, "read_threads", 4)),
        prefetch_buffer_size=int(_get(cfg, "read_buffer_size", 64)),
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


# --------------------------------------------------------------------------- sources


class _KeepEncoded(tfds.decode.SkipDecoding):
    """SkipDecoding that also works for images inside a ``tfds.features.Sequence``.

    TFDS's numpy path calls ``decode_batch_example_np`` for sequence items, which
    SkipDecoding lacks; the encoded bytes are returned unchanged either way.
    """

    def decode_batch_example_np(self, serialized):
        return serialized


def _skip_image_decoding(feature: tfds.features.FeatureConnector) -> Any:
    """A decoders tree that leaves every Image feature (nested too) as encoded bytes."""
    if isinstance(feature, tfds.features.Image):
        return _KeepEncoded()
    if isinstance(feature, tfds.features.Sequence):
        return _skip_image_decoding(feature.feature)
    if isinstance(feature, tfds.features.FeaturesDict):
        tree = {k: _skip_image_decoding(f) for k, f in feature.items()}
        return {k: v for k, v in tree.items() if v is not None} or None
    return None


def open_source(cfg: Any, split: str) -> Sequence[dict]:
    """Random-access TFDS source of ``data.name`` / ``split`` with image decoding skipped.

    Builds the synthetic scenes first when they are not yet in ``data.data_dir``.
    """
    dcfg = _data_config(cfg)
    name, data_dir = dcfg.name, _get(dcfg, "data_dir", "") or None
    synthetic_scenes.ensure_built(name, data_dir)
    features = tfds.builder(name, data_dir=data_dir).info.features
    return tfds.data_source(
        name, split=split, data_dir=data_dir, decoders=_skip_image_decoding(features)
    )


CODES_FORMAT = "vq3d_codes"  # metadata["format"] of a tools/precompute_codes.py dataset


def open_codes_source(
    codes_dir: str,
    split: str,
    *,
    length: int | None = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
) -> tuple[Sequence[dict], dict]:
    """A precomputed codes dataset's split (records ``id``, ``codes``, ``label``) and its
    metadata, after checking that it fits: the codes' length, the vocabulary and the
    image size must equal the given values (those not None). Mismatches raise ValueError.
    """
    info_file = epath.Path(codes_dir) / "dataset_info.json"
    if not info_file.exists():
        raise FileNotFoundError(
            f"data.codes_dir={codes_dir!r} is not a TFDS dataset folder (no {info_file.name}):"
            " write one with `python -m vq3d_jax.main --mode=codes --config=... "
            "--output_dir=DIR`, or leave data.codes_dir empty to encode images on the fly."
        )
    builder = tfds.builder_from_directory(codes_dir)
    meta = dict(builder.info.metadata or {})
    features = builder.info.features
    if meta.get("format") != CODES_FORMAT or "codes" not in features:
        raise ValueError(f"data.codes_dir={codes_dir!r} is not a dataset of stage-1 codes "
                         "(tools/precompute_codes.py writes those).")
    stored = {"length": int(features["codes"].shape[0]),
              "vocab_size": int(meta["vocab_size"]), "image_size": int(meta["image_size"])}
    wanted = {"length": length, "vocab_size": vocab_size, "image_size": image_size}
    wrong = {k: (stored[k], v) for k, v in wanted.items() if v is not None and v != stored[k]}
    if wrong:
        raise ValueError(
            f"The codes in data.codes_dir={codes_dir!r} do not fit this model: "
            + ", ".join(f"{k} {a} (stored) != {b} (model)" for k, (a, b) in wrong.items())
            + f". They come from the stage-1 run {meta.get('stage1_workdir')} at step "
            f"{meta.get('stage1_step')}; precompute codes with this run's stage 1."
        )
    if split not in builder.info.splits:
        raise ValueError(f"data.codes_dir={codes_dir!r} has splits "
                         f"{sorted(builder.info.splits)}, not {split!r}.")
    logging.info("codes: %s/%s from stage 1 %s step %s (%d codes of %d)", codes_dir, split,
                 meta.get("stage1_workdir"), meta.get("stage1_step"), stored["length"],
                 stored["vocab_size"])
    return builder.as_data_source(split=split), meta


# --------------------------------------------------------------------------- preprocessing


class BadRecordError(ValueError):
    """A record that cannot be decoded or has inconsistent shapes."""


@dataclasses.dataclass(frozen=True)
class _BadRecord:
    """Placeholder a preprocessing map returns for a record to be skipped and counted."""

    reason: str


def _decode_image(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        image = data  # already decoded (e.g. an in-memory source)
    else:
        if isinstance(data, np.ndarray):  # 0-d object/bytes array from a TFDS sequence
            data = data.item()
        with Image.open(io.BytesIO(bytes(data))) as im:
            image = np.asarray(im.convert("RGB"))  # convert() forces the full decode
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise BadRecordError(f"image has shape {image.shape}, expected [H, W, 3]")
    return image


def _resize_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Shorter side → ``size``, then a centred size×size crop: (new_w, new_h, left, top)."""
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def _resize_crop(array: np.ndarray, geometry, size: int, resample: int) -> np.ndarray:
    new_w, new_h, left, top = geometry
    if array.shape[:2] != (new_h, new_w):
        # float32 [H, W] becomes a 32-bit float ("F") image, uint8 [H, W, 3] an RGB one.
        im = Image.fromarray(np.ascontiguousarray(array)).resize((new_w, new_h), resample)
        array = np.asarray(im)
    return array[top : top + size, left : left + size]


def _view(image, depth, intrinsics, cam_to_world, *, size: int, flip: bool) -> dict:
    """Decode, resize/crop and optionally flip one view; intrinsics follow the pixels.

    ``depth`` may come without a camera (``intrinsics`` and ``cam_to_world`` None).
    """
    image = _decode_image(image)
    h, w = image.shape[:2]
    geometry = _resize_geometry(h, w, size)
    out = {"image": _resize_crop(image, geometry, size, Image.BILINEAR)}
    if depth is not None:
        depth = np.asarray(depth, np.float32)
        if depth.shape != (h, w):
            raise BadRecordError(f"depth {depth.shape} does not fit an image of {h}x{w}")
        out["depth"] = _resize_crop(depth, geometry, size, Image.NEAREST)
    with_cam = intrinsics is not None
    if with_cam:
        k = np.asarray(intrinsics, np.float32)
        c2w = np.asarray(cam_to_world, np.float32)
        if k.shape != (3, 3) or c2w.shape != (4, 4):
            raise BadRecordError(
                f"intrinsics {k.shape} / cam_to_world {c2w.shape} are not 3x3 / 4x4"
            )
        new_w, new_h, left, top = geometry
        # Continuous pixel coordinates (origin at the corner) map as u' = u*sx - left.
        affine = np.array(
            [[new_w / w, 0.0, -left], [0.0, new_h / h, -top], [0.0, 0.0, 1.0]], np.float32
        )
        out["intrinsics"] = affine @ k
        out["cam_to_world"] = c2w
    if flip:
        out["image"] = out["image"][:, ::-1]
        if depth is not None:
            out["depth"] = out["depth"][:, ::-1]
        if with_cam:
            # u -> size - u, i.e. c_x -> size - c_x; the world is mirrored in x.
            out["intrinsics"] = out["intrinsics"].copy()
            out["intrinsics"][0, 2] = size - out["intrinsics"][0, 2]
            out["intrinsics"][0, 1] *= -1.0
            out["cam_to_world"] = FLIP_X @ out["cam_to_world"] @ FLIP_X
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def preprocess(record: dict, opts: _Options, flip: bool = False) -> dict:
    """One raw record (encoded images) → the numpy example described in the module doc.

    Raises BadRecordError (or whatever the image decoder raises) for a bad record.
    """
    size = opts.image_size
    with_depth = opts.with_depth and "depth" in record
    # Synthetic scenes carry a camera with their depth; pseudo-GT depth datasets do not.
    with_cam = with_depth and "intrinsics" in record and "cam_to_world" in record
    main = _view(
        record["image"],
        record["depth"] if with_depth else None,
        *(record["intrinsics"], record["cam_to_world"]) if with_cam else (None, None),
        size=size,
        flip=flip,
    )
    out = {**main, "label": np.int32(record.get("label", 0))}
    nv = record.get("novel_views")
    if opts.with_novel_views and nv is not None:
        n = len(nv["image"])
        if any(len(nv[k]) != n for k in ("depth", "intrinsics", "cam_to_world", "yaw_pitch")):
            raise BadRecordError("novel views have inconsistent counts")
        views = [
            _view(
                nv["image"][i],
                nv["depth"][i],
                nv["intrinsics"][i],
                nv["cam_to_world"][i],
                size=size,
                flip=flip,
            )
            for i in range(n)
        ]
        yaw_pitch = np.asarray(np.stack(nv["yaw_pitch"]), np.float32).reshape(n, 2)
        if flip:  # mirroring the world reverses rotations about the (unmirrored) up axis
            yaw_pitch = yaw_pitch * np.array([-1.0, 1.0], np.float32)
        for key in ("image", "depth", "intrinsics", "cam_to_world"):
            out[f"novel_{key}"] = np.stack([v[key] for v in views])
        out["novel_yaw_pitch"] = yaw_pitch
    return out


def _safe_preprocess(record: dict, opts: _Options, flip: bool = False) -> dict | _BadRecord:
    try:
        return preprocess(record, opts, flip)
    except Exception as e:  # noqa: BLE001 - any failure of one record is a counted skip
        logging.warning("Skipping a bad record: %s: %s", type(e).__name__, e)
        return _BadRecord(f"{type(e).__name__}: {e}")


def _train_map(record: dict, rng: np.random.Generator, *, opts: _Options):
    flip = opts.random_flip and bool(rng.random() < 0.5)
    return _safe_preprocess(record, opts, flip)


def _codes_map(record: dict, *, vocab_size: int | None) -> dict | _BadRecord:
    """A codes record → ``codes`` int32 [L], ``label`` int32; out-of-vocabulary: a skip."""
    codes = np.asarray(record["codes"])
    if codes.ndim != 1 or (codes.size and (codes.min() < 0 or (
            vocab_size is not None and codes.max() >= vocab_size))):
        reason = f"codes of shape {codes.shape} outside [0, {vocab_size})"
        logging.warning("Skipping a bad record: %s", reason)
        return _BadRecord(reason)
    return {"codes": codes.astype(np.int32), "label": np.int32(record.get("label", 0))}


# --------------------------------------------------------------------------- bad records


class _SkipBadIterator(grain.DatasetIterator):
    """Drops _BadRecord elements; each kept element carries how many it followed."""

    def __next__(self) -> dict:
        skipped = 0
        while True:
            element = next(self._parent)
            if not isinstance(element, _BadRecord):
                return {**element, "_skipped": np.int64(skipped)}
            skipped += 1
            if skipped >= MAX_CONSECUTIVE_BAD_RECORDS:
                raise RuntimeError(
                    f"{skipped} consecutive records failed to decode (last: {element.reason});"
                    " is the dataset corrupt?"
                )

    # The skip count of a kept element is settled before it is returned, so the
    # parent's state is the whole state.
    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class _SkipBadRecords(grain.IterDataset):
    def __iter__(self) -> _SkipBadIterator:
        return _SkipBadIterator(self._parent.__iter__())


class _CountSkippedIterator(grain.DatasetIterator):
    """Replaces the per-element ``_skipped`` counts of a batch by the run's total.

    Runs in the main process (after ``mp_prefetch``), so the total covers all workers,
    and keeps it in its state so that it survives checkpoint/restore.
    """

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._num_skipped = 0

    def __next__(self) -> dict:
        batch = dict(next(self._parent))
        self._num_skipped += int(np.sum(batch.pop("_skipped")))
        batch["num_skipped"] = np.int64(self._num_skipped)
        return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "num_skipped": self._num_skipped}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._num_skipped = int(state["num_skipped"])


class _CountSkipped(grain.IterDataset):
    def __iter__(self) -> _CountSkippedIterator:
        return _CountSkippedIterator(self._parent.__iter__())


def _maybe_prefetch(ds: grain.IterDataset, cfg: Any) -> grain.IterDataset:
    workers = int(_get(cfg, "worker_count", 0))
    if workers > 0:
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=workers,
                per_worker_buffer_size=int(_get(cfg, "prefetch_buffer_size", 2)),
            )
        )
    return ds


# --------------------------------------------------------------------------- train


def create_train_iterator(
    cfg: Any,
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
      cfg: the experiment config (``cfg.data`` is used) or its ``data`` part.
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
    dcfg = _data_config(cfg)
    index, count = _process_shard(process_index, process_count)
    local = _local_batch_size(global_batch_size, count)
    codes_dir = _get(dcfg, "codes_dir", "")
    split = _get(dcfg, "train_split", "train")
    if codes_dir:
        vocab = codes_vocab_size
        if source is None:
            source, meta = open_codes_source(
                codes_dir, split, length=codes_length, vocab_size=codes_vocab_size,
                image_size=int(_get(dcfg, "image_size", 64)))
            vocab = int(meta["vocab_size"])
        example_map = functools.partial(_codes_map, vocab_size=vocab)
    else:
        if source is None:
            source = open_source(dcfg, split)
        opts = _options(dcfg, train=True)
        example_map = functools.partial(_train_map, opts=opts)
    if len(source) == 0:
        raise ValueError("The training source is empty.")
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    ds = ds[index::count]
    ds = ds.map(example_map) if codes_dir else ds.random_map(example_map)
    it = _SkipBadRecords(ds.to_iter_dataset(_read_options(dcfg)))
    it = _maybe_prefetch(it.batch(local, drop_remainder=True), dcfg)
    return iter(_CountSkipped(it))


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
    j: int, *, source, num_examples: int, index: int, count: int, opts: _Options, pad: dict
) -> dict:
    g = index + j * count  # strided share: process p reads p, p + count, ...
    if g >= num_examples:
        out = {**pad, "mask": np.bool_(False), "_skipped": np.int64(0)}
    else:
        example = _safe_preprocess(source[g], opts)
        if isinstance(example, _BadRecord):
            out = {**pad, "mask": np.bool_(False), "_skipped": np.int64(1)}
        else:
            out = {**example, "mask": np.bool_(True), "_skipped": np.int64(0)}
    return {**out, "index": np.int32(g)}


def _padding_example(source, num_examples: int, opts: _Options) -> dict:
    """Zeros shaped like a real example (the first one that decodes)."""
    for g in range(min(num_examples, MAX_CONSECUTIVE_BAD_RECORDS)):
        example = _safe_preprocess(source[g], opts)
        if not isinstance(example, _BadRecord):
            return {k: np.zeros_like(v) for k, v in example.items()}
    raise RuntimeError("No record of the evaluation source decodes; is it corrupt?")


def create_eval_iterator(
    cfg: Any,
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
    ``num_skipped``.
    """
    dcfg = _data_config(cfg)
    index, count = _process_shard(process_index, process_count)
    local = _local_batch_size(global_batch_size, count)
    if source is None:
        source = open_source(dcfg, split or _get(dcfg, "eval_split", "validation"))
    n = len(source) if num_examples is None else min(int(num_examples), len(source))
    num_batches = math.ceil(math.ceil(n / count) / local) if n > 0 else 0
    if num_batches == 0:
        return EvalBatches(None, 0, n)
    opts = _options(dcfg, train=False)
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
    it = _maybe_prefetch(ds.to_iter_dataset(_read_options(dcfg)), dcfg)
    return EvalBatches(_CountSkipped(it), num_batches, n)
