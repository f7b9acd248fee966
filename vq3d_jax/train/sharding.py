"""Device mesh, logical-axis rules and the shardings of state and batches.

Parameters carry logical axis names (`nn.with_logical_partitioning`); the
config's rules map them onto the mesh axes ('data', 'fsdp', 'tensor'). A
dimension that a mesh axis does not divide is replicated instead (logged), and
unannotated parameters above a size threshold are fsdp-sharded on their largest
divisible dimension (big_vision / MaxText fallback rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
    """The ('data', 'fsdp', 'tensor') sizes on `num_devices`; one may be -1 (= the rest)."""
    shape = [int(mesh_config[axis]) for axis in MESH_AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}.")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(
                f"Mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices are not divisible "
                f"by the fixed axes' product {known}."
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"Mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
            f"{num_devices} are available."
        )
    return tuple(shape)


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ('data', 'fsdp', 'tensor') mesh; one size may be -1 (= the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(mesh_shape(mesh_config, len(devices)), MESH_AXES,
                         axis_types=(AxisType.Auto,) * 3, devices=devices)


def itemsize(dtype) -> int:
    """Bytes per element; a PRNG key's extended dtype counts its two uint32 words."""
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 8


def tree_bytes(tree, per_device: bool = True) -> int:
    """Bytes of a tree of arrays or ShapeDtypeStructs with shardings: per device (their
    shard shapes) or in all."""
    return sum(
        math.prod(a.sharding.shard_shape(a.shape) if per_device else a.shape)
        * itemsize(a.dtype)
        for a in jax.tree.leaves(tree))


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
    """Config rules (lists after ml_collections round trips) → flax's tuple form."""
    out = []
    for name, target in rules:
        if isinstance(target, list):
            target = tuple(target)
        out.append((name, target))
    return tuple(out)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, path: str) -> P:
    """Replicates any dimension that its mesh axes do not divide evenly."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is not None and dim % _axis_size(mesh, axes):
            logging.info("sharding: %s dim %d not divisible by %s; replicated.", path, dim, axes)
            axes = None
        fitted.append(axes)
    return P(*fitted)


def _fallback_spec(shape: Sequence[int], mesh: Mesh, min_bytes: float, itemsize: int) -> P:
    """fsdp-shards the largest divisible dimension of a big unannotated array."""
    fsdp = mesh.shape["fsdp"]
    if fsdp == 1 or math.prod(shape) * itemsize < min_bytes:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            axes = [None] * len(shape)
            axes[dim] = "fsdp"
            return P(*axes)
    return P()


def state_shardings(abstract_state, mesh: Mesh, rules, fallback_min_mb: float = 4.0):
    """NamedShardings for a (boxed, abstract) state from its logical annotations."""
    logical_specs = nn.get_partition_spec(abstract_state)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    unboxed = nn.meta.unbox(abstract_state)

    def one(path, spec, leaf, logical):
        shape = getattr(leaf, "shape", ())
        name = jax.tree_util.keystr(path)
        if not len(tuple(logical)):
            itemsize = np.dtype(leaf.dtype).itemsize if hasattr(leaf, "dtype") else 4
            spec = _fallback_spec(shape, mesh, fallback_min_mb * 2**20, itemsize)
        return NamedSharding(mesh, _fit_spec(spec, shape, mesh, name))

    return jax.tree_util.tree_map_with_path(
        one, mesh_specs, unboxed, logical_specs, is_leaf=lambda x: isinstance(x, P)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into one global array per key."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the batch-sharding axes' size)."""
    return _axis_size(mesh, BATCH_AXES)
