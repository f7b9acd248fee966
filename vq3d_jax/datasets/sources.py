"""Random-access record sources: TFDS datasets with images left encoded, and codes datasets.

:func:`open_source` reads a prepared TFDS dataset (``data.name`` in ``data.data_dir``;
:func:`.pipeline.prepare` builds the synthetic scenes) with TFDS image decoding skipped, so
that images are decoded by :mod:`.preprocess` and a corrupt one is a counted skip.
:func:`open_codes_source` reads a precomputed codes dataset
(``vq3d_jax/tools/precompute_codes.py``) after checking that it fits the model.
:func:`check_prepared` says, before anything compiles, when ``data.name`` or a split
does not exist (:class:`DataConfigError`, one line naming the value and what exists).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from vq3d_jax.datasets.preprocess import setting

CODES_FORMAT = "vq3d_codes"  # metadata["format"] of a tools/precompute_codes.py dataset


class DataConfigError(ValueError):
    """``data.name``, ``data.data_dir`` or a split that does not exist; the message is one
    line naming the value and what exists (``main.py`` prints it as the run's error)."""


def prepared_datasets(data_dir: str | None) -> list[str]:
    """Names (``name[/config]``) of the TFDS datasets prepared in ``data_dir`` (None: the
    TFDS default), read from the ``name/[config/]version/dataset_info.json`` layout."""
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")
    found = set()

    def visit(path: str, parts: tuple[str, ...]) -> None:
        if os.path.exists(os.path.join(path, "dataset_info.json")) and len(parts) >= 2:
            found.add("/".join(parts[:-1]))
            return
        if len(parts) < 3:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir() and not entry.name.startswith((".", "downloads")):
                        visit(entry.path, (*parts, entry.name))

    if os.path.isdir(root):
        visit(root, ())
    return sorted(found)


def _split_names(spec: str) -> list[str]:
    """'train[:90%]+validation' → ['train', 'validation'] (TFDS split syntax)."""
    return [re.sub(r"\[.*?\]", "", part).strip() for part in spec.split("+")]


def check_prepared(data: Any, splits: Sequence[str], available: Callable[[], str]) -> None:
    """``data.name`` is prepared in ``data.data_dir`` and has every split of ``splits``
    (TFDS split specs), or a DataConfigError says which does not and what exists.

    ``available``: says which datasets to offer when the name is unknown to TFDS.
    """
    name, data_dir = data.name, setting(data, "data_dir", "") or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataConfigError(f"unknown dataset data.name={name!r}; {available()}") from None
    if not builder.is_prepared():
        raise DataConfigError(
            f"data.name={name!r} is not prepared in data.data_dir={data_dir or ''!r} "
            f"(prepared there: {', '.join(prepared_datasets(data_dir)) or 'none'}); "
            "data/README.md says how to build it."
        )
    for spec in splits:
        missing = [n for n in _split_names(spec) if n not in builder.info.splits]
        if missing:
            within = f" (in {spec!r})" if spec != missing[0] else ""
            raise DataConfigError(
                f"data.name={name!r} has no split {missing[0]!r}{within}; its splits: "
                f"{', '.join(sorted(builder.info.splits))}."
            )


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


def open_source(data: Any, split: str) -> Sequence[dict]:
    """Random-access TFDS source of ``data.name`` / ``split`` with image decoding skipped.

    ``data``: the data config. The dataset must be prepared: TFDS is not let build it here
    (:func:`.pipeline.prepare` builds the synthetic scenes; ``data/README.md`` the others).
    """
    name, data_dir = data.name, setting(data, "data_dir", "") or None
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"data.name={name!r} is not prepared in data.data_dir={data_dir!r}: "
            "datasets.pipeline.prepare(config.data) builds the synthetic scenes, "
            "data/README.md says how to build the others."
        )
    return tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        decoders=_skip_image_decoding(builder.info.features),
        download=False,
    )


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
