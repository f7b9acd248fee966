"""What a train step holds per device on an abstract mesh, with no devices and no arrays:
the mesh, the batch's shapes, the state's bytes from its shardings, parameters per
module, the activations' peak over the step's jaxpr, and XLA's memory analysis of the
step compiled for simulated CPU devices."""

from __future__ import annotations

import math
import re
import time

import jax
import numpy as np
from jax.extend import core as jex_core
from jax.sharding import AbstractMesh, AxisType

from vq3d_jax.datasets import scenes
from vq3d_jax.train import runtime
from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.flops import subjaxprs

# --plan_compile=auto compiles a step of at most this many jaxpr equations. Measured on two
# shared CPU cores: stage-2 tiny (2k) compiles in seconds, vit_vqgan tiny (10k) in 31 s, the
# GAN and NeRF tiny presets (13-21k) in 45-90 s, stage-2 large without remat (35k) in 75 s.
MAX_AUTO_COMPILE_EQNS = 5_000


# -- the mesh and the batch --------------------------------------------------------------
def abstract_mesh(mesh_config, num_devices: int) -> AbstractMesh:
    """The config's ('data', 'fsdp', 'tensor') sizes on `num_devices` (one may be -1 = the
    rest, as `sharding.create_mesh`), with no devices behind it."""
    shape = sharding_lib.mesh_shape(mesh_config, num_devices)
    return AbstractMesh(shape, sharding_lib.MESH_AXES, axis_types=(AxisType.Auto,) * len(shape))


def example_shapes(task, config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-example shape and dtype of each batch key the train step reads, as the input
    pipeline yields them (datasets/pipeline.py's docstring)."""
    s, k = int(config.data.image_size), scenes.NUM_NOVEL_VIEWS  # the synthetic scenes' views
    known = {
        "image": ((s, s, 3), np.uint8),
        "depth": ((s, s), np.float32),
        "label": ((), np.int32),
        "codes": ((getattr(task, "length", 0),), np.int32),
        "intrinsics": ((3, 3), np.float32),
        "cam_to_world": ((4, 4), np.float32),
        "novel_image": ((k, s, s, 3), np.uint8),
        "novel_depth": ((k, s, s), np.float32),
        "novel_intrinsics": ((k, 3, 3), np.float32),
        "novel_cam_to_world": ((k, 4, 4), np.float32),
        "novel_yaw_pitch": ((k, 2), np.float32),
    }
    unknown = [key for key in task.train_keys if key not in known]
    if unknown:
        raise ValueError(f"Plan mode does not know the shape of batch keys {unknown} "
                         "(add them to vq3d_jax/planning/memory.py:example_shapes).")
    return {key: known[key] for key in task.train_keys}


def abstract_batch(shapes: dict, batch_size: int, sharding=None) -> dict:
    return {k: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
            for k, (shape, dtype) in shapes.items()}


# -- bytes and parameters ----------------------------------------------------------------
def state_bytes(boxed, mesh, rules, fallback_min_mb: float) -> dict[str, int]:
    """Per-device bytes of each part of the state on `mesh` (exact: shard shape × itemsize).
    Gradients are the params' size and sharding (the step's out_shardings)."""
    _, abstract = runtime.abstract_state(boxed, mesh, rules, fallback_min_mb)
    params = sharding_lib.tree_bytes(abstract.params)
    return {
        "params": params,
        "optimizer": sharding_lib.tree_bytes(abstract.opt_state),
        "gradients": params,
        "other_state": sharding_lib.tree_bytes(
            (abstract.model_state, abstract.step, abstract.rng)),
    }


def _module(path) -> tuple[str, str]:
    """(row name, module name) of a leaf: its first two keys, numbers in the row name as *."""
    keys = "/".join(str(getattr(k, "key", k)) for k in path[:2])
    return re.sub(r"\d+", "*", keys), keys


def module_params(params) -> list[dict]:
    """Parameter count and per-device bytes per module of `params` (ShapeDtypeStructs with
    shardings): the tree's first two levels, names that differ only in their numbers merged
    (36 `blocks_<i>` → one row `blocks_*` x36), largest first."""
    rows: dict[str, dict] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name, module = _module(path)
        row = rows.setdefault(name, {"module": name, "params": 0, "bytes_per_device": 0,
                                     "members": set()})
        row["params"] += math.prod(leaf.shape)
        row["bytes_per_device"] += (math.prod(leaf.sharding.shard_shape(leaf.shape))
                                    * sharding_lib.itemsize(leaf.dtype))
        row["members"].add(module)
    for row in rows.values():
        row["repeats"] = len(row.pop("members"))
    return sorted(rows.values(), key=lambda r: -r["params"])


# -- activations: liveness over the step's jaxpr ------------------------------------------
def _size(var) -> int:
    aval = var.aval
    return (math.prod(getattr(aval, "shape", ()))
            * sharding_lib.itemsize(getattr(aval, "dtype", np.uint8)))


def activation_peak(small, large, scale: float) -> float:
    """Peak bytes of live batch-scaled values over the program order of jaxpr `small`.

    `small` and `large` are one function traced at two batch sizes b₁ < b₂. A value whose
    size differs between them scales with the batch (activations, saved residuals,
    per-example outputs); its bytes at the per-device batch b are (size₂ − size₁)·`scale`,
    `scale` = b / (b₂ − b₁). Weight-sized values (gradients, optimizer updates) are left
    out: the plan counts those, sharded, from the state. A value is live from the equation
    that makes it to its last use; an equation with inner programs (remat, scan, cond,
    pjit) adds their own peak while it runs, once (a scan's body per iteration). No fusion
    and no reordering: XLA keeps fewer elementwise temporaries alive, so this leans high,
    while what a step saves for its backward pass (the bulk) is counted as it is.
    """
    if len(small.eqns) != len(large.eqns):
        raise ValueError("The train step's program depends on the batch size beyond its "
                         "shapes: no activation estimate (--plan_compile=always for XLA's).")
    last_use: dict = {}
    for i, eqn in enumerate(small.eqns):
        for v in eqn.invars:
            if isinstance(v, jex_core.Var):
                last_use[v] = i
    for v in small.outvars:
        if isinstance(v, jex_core.Var):
            last_use[v] = len(small.eqns)
    live: dict = {}
    peak = 0.0
    for i, (a, b) in enumerate(zip(small.eqns, large.eqns)):
        inner = max((activation_peak(x, y, scale) for x, y in
                     zip(subjaxprs(a), subjaxprs(b))), default=0.0)
        made = {v: (_size(w) - _size(v)) * scale for v, w in zip(a.outvars, b.outvars)
                if not isinstance(v, jex_core.DropVar) and _size(v) != _size(w)}
        peak = max(peak, sum(live.values()) + sum(made.values()) + inner)
        live.update({v: n for v, n in made.items() if v in last_use})
        for v in a.invars:
            if isinstance(v, jex_core.Var) and last_use.get(v) == i:
                live.pop(v, None)
    return peak


def _walk(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in subjaxprs(eqn):
            yield from _walk(sub)


def trace_step(task, state, shapes, batch_size: int):
    """The jaxpr of `task.train_step` on a batch of `batch_size` examples of `shapes`."""
    return jax.make_jaxpr(task.train_step)(state, abstract_batch(shapes, batch_size)).jaxpr


# -- compiling on simulated devices ------------------------------------------------------
def compile_decision(mode: str, jaxpr, num_devices: int) -> str:
    """'' to compile, else why not."""
    if mode == "never":
        return "--plan_compile=never"
    if jax.device_count() < num_devices:
        reason = (f"jax has {jax.device_count()} devices, not {num_devices} (the command "
                  "line simulates them when it starts jax)")
        if mode == "always":
            raise ValueError(f"--plan_compile=always: {reason}.")
        return reason
    if mode == "always":
        return ""
    eqns = list(_walk(jaxpr))
    if any(e.primitive.name == "checkpoint" or "remat" in e.primitive.name for e in eqns):
        return ("the step uses remat, which the CPU compiler does not honour (its figure "
                "would count every block's activations)")
    if len(eqns) > MAX_AUTO_COMPILE_EQNS:
        return (f"{len(eqns)} jaxpr equations: compiling would take well over 40 s on a CPU "
                "(--plan_compile=always to wait)")
    return ""


def xla_analysis(task, config, num_devices: int, shapes: dict) -> dict:
    """The sharded train step compiled for `num_devices` CPU devices: XLA's memory and
    cost analysis per device."""
    start = time.perf_counter()
    rt = runtime.build_runtime(task, config, jax.devices()[:num_devices])
    batch = abstract_batch(shapes, int(config.global_batch_size),
                           sharding_lib.batch_sharding(rt.mesh))
    with rt.scope():
        compiled = runtime.compile_train_step(rt).lower(rt.abstract_state, batch).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return {
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "compile_s": time.perf_counter() - start,
        "note": "XLA's CPU compile of the step: an approximation of an accelerator's buffer "
                "assignment and fusion",
    }
