r"""Precomputes VQ3D stage-2 training data: the frozen stage-1 encoder's codes, once.

  python -m vq3d_jax.main --mode=codes --config=configs/vq3d_stage2.py:tiny \
      --workdir=STAGE2_WORKDIR --config.stage1.workdir=STAGE1_WORKDIR \
      [--output_dir=CODES_DIR (default STAGE2_WORKDIR/codes)] \
      [--splits=train,validation] [--overwrite] [--config.key=value ...]

then train the prior on them with ``--config.data.codes_dir=CODES_DIR`` (the train
split is read from there; eval still encodes the images of ``data.name`` on the fly).

Every example of each split of ``data.name`` (fixed order, ``data.image_size``, no
augmentation) goes through ``task.encode_step`` under the run's mesh, exactly as
training encodes on the fly. The output is a TFDS dataset in the array_record format
(read back by ``tfds.builder_from_directory(CODES_DIR)``; no tensorflow needed) with

- ``id``: int64, the example's position in its source split,
- ``codes``: int32 [L], the code indices in raster order,
- ``label``: int64, the source's label,

in ``id`` order. Bad source records (masked eval slots) are skipped and counted. The
dataset's ``metadata.json`` (and description) name the stage-1 run and checkpoint
step, the vocabulary size, the length and the image size, so that a reader can refuse
codes that do not fit its model (``datasets.sources.open_codes_source``).

The dataset is written under a temporary sibling folder and renamed into place at the
end: an interrupted run leaves no ``CODES_DIR`` (at most an ``*.incomplete-*`` folder,
removed on the way out when possible). An existing ``CODES_DIR`` is refused unless
``--overwrite``. Multi-process runs (``--distributed`` or ``--coordinator_address``):
every process reads its share and runs the same jitted
calls, the outputs are replicated, and only process 0 writes.

Random flips are not applied (the codes of a flipped image are not the flipped codes);
training on precomputed codes therefore has no flip augmentation.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from vq3d_jax.datasets.sources import CODES_FORMAT

DATASET_VERSION = "1.0.0"
# What the jitted encode step receives: images and labels, plus each slot's split
# position and mask, which come back replicated so that process 0 sees every slot.
_BATCH_KEYS = ("image", "label", "index", "mask")


# --------------------------------------------------------------------------- writing


class CodesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the given per-split example iterables as a TFDS dataset (array_record).

    Not registered with TFDS: a written dataset is read back by its directory
    (``tfds.builder_from_directory``), which needs no builder class.
    """

    name = CODES_FORMAT  # the TFDS name of every codes dataset (files vq3d_codes-<split>.*)
    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Stage-1 codes (vq3d_jax.tools.precompute_codes)."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default lookup of a builder's file needs `importlib_resources` (absent).
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        split_examples: Mapping[str, Iterable[dict]],
        length: int,
        metadata: dict,
        **kwargs,
    ):
        self._split_examples = split_examples
        self._length = int(length)
        self._metadata = tfds.core.MetadataDict(metadata)
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        f = tfds.features
        m = self._metadata
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"VQ3D stage-1 codes: {m.get('length')} codes of {m.get('vocab_size')} per "
                f"{m.get('image_size')}² image of {m.get('source_dataset')}, from the stage-1 "
                f"run {m.get('stage1_workdir')} at step {m.get('stage1_step')}. "
                f"Metadata: {json.dumps(dict(m), sort_keys=True)}"
            ),
            features=f.FeaturesDict(
                {
                    "id": f.Scalar(dtype=np.int64, doc="Position in the source split."),
                    "codes": f.Tensor(shape=(self._length,), dtype=np.int32,
                                      doc="Code indices, raster order."),
                    "label": f.Scalar(dtype=np.int64, doc="The source example's label."),
                }
            ),
            # Keep generation order on disk: record i is the i-th written example.
            disable_shuffling=True,
            metadata=self._metadata,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(examples)
                for split, examples in self._split_examples.items()}

    def _generate_examples(self, examples: Iterable[dict]):
        for example in examples:
            yield int(example["id"]), example


def _check_output(out: epath.Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"--output_dir={out} exists; pass --overwrite to replace it (it is replaced "
            "only once the new dataset is complete)."
        )


def write_codes_dataset(
    output_dir: str,
    split_examples: Mapping[str, Iterable[dict]],
    *,
    length: int,
    metadata: dict,
    overwrite: bool = False,
) -> str:
    """Writes a codes dataset to `output_dir`, all or nothing.

    `split_examples` maps split names to iterables of dicts ``id``/``codes``/``label``
    (ids unique within a split; written in iteration order). `metadata` is stored in
    ``metadata.json``; the iterables may still add to it while they are consumed.
    The dataset is built in a temporary sibling folder and renamed to `output_dir`
    only when every split is written.
    """
    out = epath.Path(output_dir)
    _check_output(out, overwrite)
    tmp = out.parent / f"{out.name}.incomplete-{uuid.uuid4().hex[:8]}"
    old = None
    try:
        builder = CodesBuilder(split_examples=split_examples, length=length,
                               metadata=metadata, data_dir=os.fspath(tmp))
        builder.download_and_prepare(file_format="array_record")
        _check_output(out, overwrite)  # another writer may have finished meanwhile
        if out.exists():
            old = out.parent / f"{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        epath.Path(builder.data_dir).rename(out)
    finally:
        tmp.rmtree(missing_ok=True)
        if old is not None:
            old.rmtree(missing_ok=True)
    return os.fspath(out)


# --------------------------------------------------------------------------- encoding


def _encode_fn(task):
    def encode(state, batch):
        out = task.encode_step(state, {k: batch[k] for k in ("image", "label")})
        return {**out, "index": batch["index"], "mask": batch["mask"]}

    return encode


def encoded_examples(rt, state, batches, *, stats: dict | None = None,
                     desc: str = "") -> Iterator[dict]:
    """The codes of every example of `batches` (a `datasets.pipeline.EvalBatches`).

    Every process must consume this (the jitted calls are collective); all of them
    get every example of the global batches, in ``id`` order. Masked slots inside the
    split (bad records) are not yielded; they are counted in ``stats['num_skipped']``,
    and written examples in ``stats['num_examples']``.
    """
    import jax
    import tqdm

    from vq3d_jax.train import sharding

    encode = rt.compiled("precompute_codes", _encode_fn(rt.task))
    stats = {} if stats is None else stats
    stats.setdefault("num_examples", 0)
    stats.setdefault("num_skipped", 0)
    n = batches.num_examples
    bar = tqdm.tqdm(total=n, desc=desc, unit="image", disable=jax.process_index() != 0,
                    mininterval=10.0 if not sys.stderr.isatty() else 0.1)
    start = time.perf_counter()
    try:
        for b, local in enumerate(batches):
            batch = sharding.global_batch({k: local[k] for k in _BATCH_KEYS}, rt.mesh)
            with rt.scope():
                out = jax.device_get(encode(state, batch))
            index = np.asarray(out["index"])
            real = index < n  # slots past the split's end are padding
            keep = real & np.asarray(out["mask"], bool)
            stats["num_skipped"] += int(np.sum(real & ~keep))
            stats["num_examples"] += int(np.sum(keep))
            bar.update(int(np.sum(real)))
            if b and b % 100 == 0:
                logging.info("%s: %d/%d images, %.0f images/s", desc,
                             stats["num_examples"] + stats["num_skipped"], n,
                             (stats["num_examples"] + stats["num_skipped"])
                             / (time.perf_counter() - start))
            # A global batch holds a contiguous range of ids (process p's slots p, p+P,
            # ... of it): sorting within the batch gives the split's order.
            for i in np.flatnonzero(keep)[np.argsort(index[keep], kind="stable")]:
                yield {
                    "id": np.int64(index[i]),
                    "codes": np.asarray(out["codes"][i], np.int32),
                    "label": np.int64(out["label"][i]),
                }
    finally:
        bar.close()


def load_stage1(config, devices=None):
    """→ (the stage-2 runtime of `config`, its state with the stage-1 generator loaded,
    the stage-1 step that generator comes from).

    `config`: a stage-2 config with ``stage1.workdir`` set. The prior is not used here:
    it is built at its smallest (its parameters and optimizer state are allocated by
    ``init_state`` all the same) and without fused attention.
    """
    from vq3d_jax.tasks import get_task
    from vq3d_jax.tasks.vq3d_stage2 import STAGE1
    from vq3d_jax.train import runtime
    from vq3d_jax.train.task import EncodesCodes

    if not config.stage1.workdir:
        raise ValueError("Set --config.stage1.workdir to the stage-1 run whose codes to store.")
    config = config.copy_and_resolve_references()
    config.prior.update(size="tiny", remat=False, attention_impl="")
    task = get_task(config)
    if not isinstance(task, EncodesCodes):
        raise ValueError(f"--mode=codes: config.task={config.task!r} does not encode codes "
                         "(use a VQ3D stage-2 config).")
    rt = runtime.build_runtime(task, config, devices=devices)
    state, steps = runtime.load_pretrained(rt, runtime.init_state(rt, pretrained=False))
    return rt, state, steps[STAGE1]


def precompute(rt, state, stage1_step: int, output_dir: str,
               splits: Sequence[str] = ("train", "validation"), *,
               overwrite: bool = False) -> dict:
    """Encodes `splits` of ``data.name`` of `rt`'s config into a codes dataset.

    `rt`, `state`, `stage1_step`: from `load_stage1`. Every process calls this; process 0 writes.
    Returns the metadata written, with per-split ``num_examples`` and ``num_skipped``.
    """
    import jax
    from jax.experimental import multihost_utils

    from vq3d_jax.datasets import pipeline

    config, task = rt.config, rt.task
    is_writer = jax.process_index() == 0
    if is_writer:
        _check_output(epath.Path(output_dir), overwrite)
    metadata = {
        "format": CODES_FORMAT,
        "vocab_size": int(task.vocab_size),
        "length": int(task.length),
        "image_size": int(config.data.image_size),
        "stage1_workdir": os.path.abspath(task.stage1_workdir),
        "stage1_step": int(stage1_step),
        "source_dataset": str(config.data.name),
        "source_data_dir": str(config.data.data_dir),
        "splits": {},
    }
    logging.info("precompute_codes: %s", json.dumps(metadata))

    def split_examples(split: str) -> Iterator[dict]:
        batches = pipeline.create_eval_iterator(
            config.data, split=split, global_batch_size=config.eval.global_batch_size)
        stats = metadata["splits"].setdefault(split, {})
        logging.info("precompute_codes: %s/%s: %d examples in %d batches", config.data.name,
                     split, batches.num_examples, len(batches))
        yield from encoded_examples(rt, state, batches, stats=stats,
                                    desc=f"codes {config.data.name}/{split}")
        logging.info("precompute_codes: %s: %d encoded, %d bad records skipped", split,
                     stats["num_examples"], stats["num_skipped"])

    if is_writer:
        write_codes_dataset(output_dir, {s: split_examples(s) for s in splits},
                            length=task.length, metadata=metadata, overwrite=overwrite)
        logging.info("precompute_codes: wrote %s", output_dir)
    else:  # the same collective calls, nothing written
        for split in splits:
            for _ in split_examples(split):
                pass
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("precompute_codes done")
    return metadata


# --------------------------------------------------------------------------- command line


def run(config, output_dir: str, splits: Sequence[str], *, overwrite: bool = False) -> dict:
    """`python -m vq3d_jax.main --mode=codes`: checks the output, loads stage 1, encodes."""
    import jax

    if jax.process_index() == 0:  # refuse before the minutes of loading
        _check_output(epath.Path(output_dir), overwrite)
    rt, state, stage1_step = load_stage1(config)
    summary = precompute(rt, state, stage1_step, output_dir, [s for s in splits if s],
                         overwrite=overwrite)
    if jax.process_index() == 0:
        print(json.dumps({"output_dir": output_dir, **summary}, indent=1))
    return summary
