"""Converted pretrained weights (FID InceptionV3, LPIPS): the file format and its loading.

Neither network's weights can be downloaded at run time (offline clusters, CI):
users fetch the public PyTorch files once and convert them
(`python -m vq3d_jax.tools.convert_weights`). The converted file is one `.npz`:
every parameter under its '/'-joined Flax path, plus `__meta__`, a JSON record of
the network, the source file's name and SHA-256, and the format version.

Loading checks the record and every path and shape against the module, so a
missing, foreign or truncated file is a clear error naming the file to get, the
command that converts it and the config key that points at it — never a silent
fallback to random weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

FORMAT_VERSION = 1
_META = "__meta__"


class MissingWeightsError(FileNotFoundError):
    """The configured weights file is unset or absent."""


class WeightsError(ValueError):
    """The weights file exists but is not the network's converted weights."""


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """What a network's users must fetch and how to convert it."""

    network: str  # recorded in the file, e.g. "inception_fid"
    source: str  # the public file(s) to get, and from where
    convert_command: str  # e.g. "python -m vq3d_jax.tools.convert_weights inception SRC DST"

    def missing_message(self, config_key: str, path: str) -> str:
        where = f"{path!r} does not exist" if path else "it is not set"
        return (
            f"{self.network} needs converted weights, but {config_key} is where they are "
            f"read from and {where}. Get {self.source}; convert it with\n"
            f"  {self.convert_command}\n"
            f"and pass --{config_key}=DST (the library never downloads weights)."
        )


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(path: str, params: Mapping[str, Any], *, network: str, source_name: str,
         source_sha256: str) -> None:
    """Writes nested `params` (arrays) to `path` atomically (a temporary file, then rename)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    meta = {
        "network": network,
        "source": source_name,
        "source_sha256": source_sha256,
        "format_version": FORMAT_VERSION,
    }
    arrays = {name: np.asarray(value) for name, value in flat.items()}
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_meta(path: str) -> dict:
    with np.load(path) as data:
        if _META not in data.files:
            raise WeightsError(f"{path} has no {_META} record: not a converted weights file.")
        return json.loads(data[_META].tobytes().decode())


def load(path: str, spec: WeightsSpec, config_key: str, expected: Any | None = None) -> dict:
    """→ nested dict of float32 numpy arrays, checked against `expected` (a params pytree).

    `expected` holds arrays or `jax.ShapeDtypeStruct`s, e.g. `jax.eval_shape(module.init,
    ...)["params"]`; every path must be present with its shape, and nothing else.
    """
    if not path or not os.path.exists(path):
        raise MissingWeightsError(spec.missing_message(config_key, path))
    try:
        meta = read_meta(path)
        with np.load(path) as data:
            flat = {name: data[name] for name in data.files if name != _META}
    except (OSError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{path} ({config_key}) is not a readable weights file: {e}") from e
    if meta.get("network") != spec.network:
        raise WeightsError(
            f"{path} ({config_key}) holds {meta.get('network')!r} weights, not "
            f"{spec.network!r}. Convert the right file with\n  {spec.convert_command}"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path} has format version {meta.get('format_version')}; this build reads "
            f"{FORMAT_VERSION}. Convert the source again with\n  {spec.convert_command}"
        )
    if expected is not None:
        check_shapes(flat, traverse_util.flatten_dict(dict(expected), sep="/"), path)
    return traverse_util.unflatten_dict(
        {name: np.asarray(value, np.float32) for name, value in flat.items()}, sep="/"
    )


def check_shapes(flat: Mapping[str, Any], expected_flat: Mapping[str, Any], what: str) -> None:
    """Raises WeightsError listing missing, unexpected and mis-shaped parameters."""
    missing = sorted(set(expected_flat) - set(flat))
    unexpected = sorted(set(flat) - set(expected_flat))
    wrong = sorted(
        f"{name}: {tuple(np.shape(flat[name]))} != {tuple(expected_flat[name].shape)}"
        for name in set(flat) & set(expected_flat)
        if tuple(np.shape(flat[name])) != tuple(expected_flat[name].shape)
    )
    if missing or unexpected or wrong:
        def head(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        raise WeightsError(
            f"{what} does not match the network: {len(missing)} missing "
            f"[{head(missing)}], {len(unexpected)} unexpected [{head(unexpected)}], "
            f"{len(wrong)} of the wrong shape [{head(wrong)}]."
        )
