r"""`--mode=plan`: what a config costs per device on a mesh, worked out on a CPU in seconds.

  python -m vq3d_jax.main --config=configs/vq3d_stage2.py:imagenet256_large --workdir=DIR \
      --mode=plan --config.mesh.fsdp=64 [--plan_devices=N] [--plan_accelerator=v5p]

Nothing is allocated and no dataset is read: the state is `jax.eval_shape` of the
task's `init_state`, its shardings come from the config's rules on a
`jax.sharding.AbstractMesh` (any device count, no devices behind it), and the train
step is only traced. The plan (a table on stdout, `WORKDIR/plan.json`) holds

- parameters per module: the params tree's first two levels, numbered repeats
  (`blocks_0..35`, `b4_conv..b256_conv`) merged into one row;
- bytes per device of params, optimizer state, gradients (sharded as the params), other
  state (EMAs, frozen networks, statistics) and the batch: exact, from shard shapes;
- activations per device: an estimate (`activation_peak`), or XLA's memory analysis of
  the step compiled for the mesh on simulated CPU devices when that is quick and
  meaningful (`--plan_compile`). The CPU compiler's buffer assignment only approximates
  an accelerator's, and it does not honour remat: stage-2 large compiled for 64 CPU
  devices keeps 104 GiB of temporaries per device with remat on, about what the estimate
  finds with it off (112 GiB; 6.2 GiB on). Where both hold they agree within 1.6x (the
  tiny presets on one device, estimate / XLA in GiB: vit_vqgan 0.11 / 0.07, vq3d_stage1
  0.59 / 0.47, gmpi 0.03 / 0.04, gmnr 0.23 / 0.22);
- model FLOPs per step as the benchmarks count them (analytic for the AR prior, the train
  step's jaxpr matmuls otherwise), and the step time and MFU they predict on an
  accelerator of `ACCELERATORS` (a roofline: `predict`);
- when a device's memory would overflow: the largest contributors and what would fit.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time

import flax.linen as nn
import jax
import numpy as np
from jax.extend import core as jex_core
from jax.sharding import AbstractMesh, AxisType

from vq3d_jax.datasets import scenes
from vq3d_jax.models import ar_prior, vit_vqgan
from vq3d_jax.tasks import get_task
from vq3d_jax.train import flops as flops_lib
from vq3d_jax.train import loop
from vq3d_jax.train import sharding as sharding_lib


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    bf16_tflops: float  # dense (no 2:4 sparsity) peak per chip
    hbm_gb_s: float  # HBM bandwidth per chip, 1e9 bytes/s
    memory_gib: float  # HBM per chip as the vendor lists it (a little of it is reserved)


# Per chip, from the vendors' pages: Google Cloud TPU docs (cloud.google.com/tpu/docs/v4,
# /v5e, /v5p, /v6e: "peak compute per chip (bf16)", "HBM capacity and bandwidth"), NVIDIA
# datasheets (A100 80GB SXM, H100 SXM, H200 SXM: dense BF16 Tensor Core, i.e. half the
# "with sparsity" figure). The 989.4 of H100 is bench/train_step.py's.
ACCELERATORS = {
    "v4": Accelerator("TPU v4", 275.0, 1200.0, 32.0),
    "v5e": Accelerator("TPU v5e", 197.0, 819.0, 16.0),
    "v5p": Accelerator("TPU v5p", 459.0, 2765.0, 95.0),
    "v6e": Accelerator("TPU v6e", 918.0, 1638.0, 32.0),
    "a100": Accelerator("NVIDIA A100 80GB SXM", 312.0, 2039.0, 80.0),
    "h100": Accelerator("NVIDIA H100 SXM", 989.4, 3350.0, 80.0),
    "h200": Accelerator("NVIDIA H200 SXM", 989.4, 4800.0, 141.0),
}

# Stage 2 without a stage-1 run: (codebook size, codes per image) of the stage-1 preset it
# would use: configs/vq3d_stage1.py:tiny (512, (32/4)²) and :imagenet256 (8192, (256/8)²,
# as bench/stage2_train_step.py assumes).
STAGE2_DEFAULT_CODES = {"tiny": (512, 64), "imagenet": (8192, 1024)}
# --plan_compile=auto compiles a step of at most this many jaxpr equations. Measured on two
# shared CPU cores: stage-2 tiny (2k) compiles in seconds, vit_vqgan tiny (10k) in 31 s, the
# GAN and NeRF tiny presets (13-21k) in 45-90 s, stage-2 large without remat (35k) in 75 s.
MAX_AUTO_COMPILE_EQNS = 5_000
_GIB = 2**30


# -- the config, mesh, batch -------------------------------------------------------------
def plannable(config) -> tuple:
    """A copy of `config` that builds and traces on a CPU → (config, notes on what changed)."""
    config = copy.deepcopy(config)
    notes = []
    for name, block in config.items():
        if hasattr(block, "get") and block.get("attention_impl"):
            notes.append(f"{name}.attention_impl={block.attention_impl!r} traced as XLA attention "
                         "(CPU): its L×L scores count as activations, which a fused kernel "
                         "does not keep")
            block.attention_impl = ""
    if config.task == "vq3d_stage2" and not config.stage1.workdir:
        p = config.prior
        if not (p.vocab_size and p.length):
            stage1 = "tiny" if config.get("preset") == "tiny" else "imagenet"
            vocab, length = STAGE2_DEFAULT_CODES[stage1]
            p.vocab_size, p.length = int(p.vocab_size) or vocab, int(p.length) or length
            notes.append(f"no stage1.workdir: prior.vocab_size={p.vocab_size}, prior.length="
                         f"{p.length} assumed (the {stage1} stage-1 preset's codes)")
        if not config.data.codes_dir:
            config.data.codes_dir = "(plan: not read)"
            notes.append("no stage1.workdir: the step trains on precomputed codes")
    return config, notes


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
                         "(add them to vq3d_jax/plan.py:example_shapes).")
    return {key: known[key] for key in task.train_keys}


def abstract_batch(shapes: dict, batch_size: int, sharding=None) -> dict:
    return {k: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
            for k, (shape, dtype) in shapes.items()}


# -- bytes and parameters ----------------------------------------------------------------
def state_bytes(boxed, mesh, rules, fallback_min_mb: float) -> dict[str, int]:
    """Per-device bytes of each part of the state on `mesh` (exact: shard shape × itemsize).
    Gradients are the params' size and sharding (the step's out_shardings)."""
    _, abstract = loop.abstract_state(boxed, mesh, rules, fallback_min_mb)
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
def _subjaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, jex_core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex_core.Jaxpr):
                yield v


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
                     zip(_subjaxprs(a), _subjaxprs(b))), default=0.0)
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
        for sub in _subjaxprs(eqn):
            yield from _walk(sub)


def _trace(task, state, shapes, batch_size: int):
    return jax.make_jaxpr(task.train_step)(state, abstract_batch(shapes, batch_size)).jaxpr


# -- FLOPs and time ----------------------------------------------------------------------
def model_flops(task, config, global_jaxpr) -> dict:
    """Model FLOPs per step, counted as the benchmarks count them."""
    n = int(config.global_batch_size)
    if config.task == "vq3d_stage2":
        per_sequence = ar_prior.analytic_flops_per_sequence(task.dims, task.length,
                                                            task.vocab_size)
        return {"per_step": 3.0 * n * per_sequence,
                "source": "analytic: 3 x batch x ar_prior.analytic_flops_per_sequence "
                          "(bench/stage2_train_step.py; no remat recompute)"}
    out = {"per_step": flops_lib.jaxpr_flops(global_jaxpr),
           "source": "jaxpr: 2*MACs of the train step's matmuls and convolutions at the "
                     "global batch (bench/train_step.py)"}
    if config.task == "vit_vqgan":  # the autoencoder alone (no D, no LPIPS), fwd + bwd
        m = config.model
        out["analytic_autoencoder_per_step"] = 3.0 * n * vit_vqgan.analytic_flops_per_image(
            m.encoder_variant, m.decoder_variant, int(m.patch_size),
            int(config.data.image_size), int(m.codebook_size), int(m.code_dim))
    return out


def hbm_bytes_estimate(memory: dict, full_params: int, tensor: int) -> float:
    """HBM traffic of one step per device, a lower bound: the saved activations written and
    read once, the (gathered) weights read in the forward and backward passes, and the
    optimizer's read of params, gradients and moments and write of params and moments."""
    weights = full_params / tensor
    return (2 * memory["activations"] + 2 * weights
            + 2 * (memory["params"] + memory["optimizer"]) + memory["gradients"])


def predict(flops_per_device: float, hbm_bytes: float, accel: Accelerator,
            mfu: float) -> dict:
    """Roofline step time: the longer of the model FLOPs at `mfu` of peak (MFU counts model
    FLOPs, PaLM App. B: remat's recompute is inside it) and the HBM traffic at full
    bandwidth. Collectives (fsdp all-gathers, gradient reduce-scatters) are not modelled:
    they overlap compute when the per-device batch is large enough."""
    peak = accel.bf16_tflops * 1e12
    compute_s = flops_per_device / (peak * mfu)
    hbm_s = hbm_bytes / (accel.hbm_gb_s * 1e9)
    step = max(compute_s, hbm_s)
    return {"step_time_s": step, "compute_s": compute_s, "hbm_s": hbm_s,
            "bound": "compute" if compute_s >= hbm_s else "memory",
            "mfu_assumed": mfu, "mfu": flops_per_device / (step * peak) if step else 0.0}


# -- compiling on simulated devices ------------------------------------------------------
def _compile_decision(mode: str, jaxpr, num_devices: int) -> str:
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
    rt = loop.build_runtime(task, config, jax.devices()[:num_devices])
    batch = abstract_batch(shapes, int(config.global_batch_size),
                           sharding_lib.batch_sharding(rt.mesh))
    with rt.scope():
        compiled = loop.compile_train_step(rt).lower(rt.abstract_state, batch).compile()
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


# -- what would fit ----------------------------------------------------------------------
def _remat_keys(config) -> list[str]:
    return [f"{name}.remat" for name, block in config.items()
            if hasattr(block, "get") and block.get("remat") is False]


def _first_fit(candidates, total_of, limit: float):
    """(candidate, total) of the first candidate whose total fits under `limit`, else of
    the last one (the furthest it goes); None without candidates."""
    best = None
    for candidate in candidates:
        best = (candidate, total_of(candidate))
        if best[1] <= limit:
            break
    return best


def suggestions(ctx: dict, accel: Accelerator) -> list[str]:
    """What would bring a device under `accel`'s memory: per lever the smallest change that
    fits (or the largest there is, 'still over'), with its per-device total. More fsdp
    re-shards the state exactly and splits the batch over more devices; grad accumulation
    divides the activations (the micro-batch's) and keeps the state."""
    memory, mesh, batch = ctx["memory"], ctx["mesh"], ctx["global_batch"]
    limit = accel.memory_gib * _GIB
    act, fixed = memory["activations"], memory["batch"]

    def on_mesh(sizes: dict, activations: float) -> float:
        mesh = AbstractMesh(tuple(sizes[a] for a in sharding_lib.MESH_AXES),
                            sharding_lib.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
        state = state_bytes(ctx["boxed"], mesh, ctx["rules"], ctx["fallback_min_mb"])
        return sum(state.values()) + activations + fixed

    def verdict(total: float) -> str:
        return f"{total / _GIB:.1f} GiB per device" + ("" if total <= limit else ", still over")

    out = []
    if mesh["data"] > 1:
        fsdp = mesh["data"] * mesh["fsdp"]
        total = on_mesh({**mesh, "data": 1, "fsdp": fsdp}, act)
        out.append(f"--config.mesh.data=1 --config.mesh.fsdp={fsdp} (same devices): "
                   f"{verdict(total)}")
    factors = [f for f in (2, 4, 8, 16, 32, 64)
               if batch % (mesh["data"] * mesh["fsdp"] * f) == 0]
    found = _first_fit(factors, lambda f: on_mesh({**mesh, "fsdp": mesh["fsdp"] * f}, act / f),
                       limit)
    if found:
        f, total = found
        out.append(f"--config.mesh.fsdp={mesh['fsdp'] * f} ({ctx['num_devices'] * f} devices, "
                   f"per-device batch {ctx['per_device_batch'] // f}): {verdict(total)}")
    steps, local = ctx["grad_accum_steps"], ctx["per_device_batch"]
    state = sum(memory[k] for k in ("params", "optimizer", "gradients", "other_state"))
    found = _first_fit([k for k in (2, 4, 8, 16, 32, 64) if local % (steps * k) == 0],
                       lambda k: state + fixed + act / k, limit)
    if found:
        k, total = found
        out.append(f"--config.grad_accum_steps={steps * k} (activations /{k}, same update): "
                   f"{verdict(total)}")
    for key in _remat_keys(ctx["config"]):
        out.append(f"--config.{key}=True: a block keeps only its input for the backward "
                   "pass (re-run the plan with it for the figure)")
    return out


# -- the plan ----------------------------------------------------------------------------
def _layout(config, num_devices: int) -> tuple[AbstractMesh, int, int]:
    """(mesh, per-device batch, grad_accum_steps), or a one-line error when they do not fit."""
    mesh = abstract_mesh(config.mesh, num_devices)
    steps = loop.check_batch_layout(config, mesh)
    return mesh, int(config.global_batch_size) // sharding_lib.batch_divisor(mesh), steps


def _activations(task, config, state, shapes, local: int, num_devices: int,
                 compile_mode: str, gradients: int) -> tuple[int, dict, dict, dict | None]:
    """(activation bytes per device, how they were found, model FLOPs, XLA's analysis)."""
    # Traces at the global batch and twice it (sizes the config's program is made for,
    # unlike a per-device batch of 1) tell activations from weight-sized values; the first
    # also gives the jaxpr FLOPs.
    batch = int(config.global_batch_size)
    small = _trace(task, state, shapes, batch)
    large = _trace(task, state, shapes, 2 * batch)
    estimate = round(activation_peak(small, large, local / batch))
    flops = model_flops(task, config, small)
    why_not = _compile_decision(compile_mode, small, num_devices)
    if why_not:
        return estimate, {
            "source": "estimate", "xla_skipped": why_not,
            "method": "peak of the live batch-scaled values of the train step's jaxpr, "
                      "scaled to the per-device batch (no fusion: leans high)"}, flops, None
    xla = xla_analysis(task, config, num_devices, shapes)
    # XLA's temporaries hold the gradients too, which the plan counts on their own.
    return max(xla["temp_bytes"] - gradients, 0), {
        "source": "xla_memory_analysis", "estimate_bytes": estimate,
        "method": "XLA temp bytes less the gradients (CPU compile)"}, flops, xla


def make_plan(config, num_devices: int, accelerator: str = "h100", mfu: float = 0.4,
              compile_mode: str = "auto") -> dict:
    """The plan of `config`'s train step on `num_devices` devices, as a JSON-able dict."""
    start = time.perf_counter()
    if accelerator not in ACCELERATORS:
        raise ValueError(f"--plan_accelerator={accelerator!r}: one of {sorted(ACCELERATORS)}.")
    if not 0 < mfu <= 1:
        raise ValueError(f"--plan_mfu={mfu}: a fraction in (0, 1].")
    config, notes = plannable(config)
    task = get_task(config)
    mesh, local, steps = _layout(config, num_devices)
    sizes = dict(mesh.shape)
    rules = sharding_lib.rules_from_config(config.sharding.logical_axis_rules)
    fallback = config.sharding.fallback_min_mb
    boxed = jax.eval_shape(task.init_state, jax.random.PRNGKey(config.seed))
    _, abstract = loop.abstract_state(boxed, mesh, rules, fallback)
    memory = state_bytes(boxed, mesh, rules, fallback)
    shapes = example_shapes(task, config)
    memory["batch"] = sharding_lib.tree_bytes(abstract_batch(shapes, local), per_device=False)
    memory["activations"], activations, flops, xla = _activations(
        task, config, nn.meta.unbox(boxed), shapes, local, num_devices, compile_mode,
        memory["gradients"])
    total = sum(memory.values())

    full_params = sharding_lib.tree_bytes(abstract.params, per_device=False)
    from_xla = bool(xla and xla["bytes_accessed"])
    hbm = (xla["bytes_accessed"] if from_xla
           else hbm_bytes_estimate(memory, full_params, sizes["tensor"]))
    per_device_flops = flops["per_step"] / num_devices
    modules = module_params(abstract.params)
    plan = {
        "config": {"task": config.task, "preset": config.get("preset", ""),
                   "global_batch_size": int(config.global_batch_size),
                   "grad_accum_steps": steps},
        "num_devices": num_devices,
        "mesh": sizes,
        "per_device_batch": local,
        "params": {"total": sum(r["params"] for r in modules), "modules": modules,
                   "bytes_total": full_params},
        "memory_per_device": {"bytes": memory, "total_bytes": total,
                              "activations": activations,
                              "state_source": "exact: shard shapes of the abstract state"},
        "flops": {**flops, "per_device": per_device_flops},
        "hbm_bytes_per_device": {
            "bytes": hbm,
            "source": ("xla_cost_analysis" if from_xla else "estimate: 2*activations + "
                       "2*gathered weights + optimizer read/write")},
        "xla": xla,
        "accelerator": accelerator,
        "accelerators": {
            key: {**dataclasses.asdict(accel), "fits": total <= accel.memory_gib * _GIB,
                  **predict(per_device_flops, hbm, accel, mfu)}
            for key, accel in ACCELERATORS.items()},
        "notes": notes,
        "warnings": [],
    }
    chosen = ACCELERATORS[accelerator]
    if total > chosen.memory_gib * _GIB:
        plan["warnings"].append(_overflow_warning(memory, total, modules, chosen))
        plan["suggestions"] = suggestions({
            "memory": memory, "mesh": sizes, "global_batch": int(config.global_batch_size),
            "boxed": boxed, "rules": rules, "fallback_min_mb": fallback,
            "num_devices": num_devices, "grad_accum_steps": steps, "per_device_batch": local,
            "config": config}, chosen)
    plan["plan_s"] = time.perf_counter() - start
    return plan


def _overflow_warning(memory: dict, total: int, modules: list[dict],
                      accel: Accelerator) -> str:
    parts = sorted(((v, k) for k, v in memory.items()), reverse=True)[:3]
    named = ", ".join(f"{k} {v / _GIB:.1f} GiB" for v, k in parts)
    top = ", ".join(f"{r['module']} ({r['params'] / 1e6:.1f}M params)" for r in modules[:3])
    return (f"{total / _GIB:.1f} GiB per device overflows the {accel.memory_gib:g} GiB of "
            f"{accel.name}: largest {named}; largest modules {top}.")


# -- output ------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / _GIB:.2f}"


def format_plan(plan: dict) -> str:
    """The plan as a plain-text table."""
    c, m = plan["config"], plan["memory_per_device"]
    mesh = " ".join(f"{k}={v}" for k, v in plan["mesh"].items())
    lines = [
        f"Plan: {c['task']}:{c['preset']} on {plan['num_devices']} devices, mesh {mesh}",
        f"global batch {c['global_batch_size']}, {plan['per_device_batch']} per device, "
        f"grad_accum_steps {c['grad_accum_steps']}",
        "",
        f"{'module':<40}{'params':>16}{'MiB/device':>12}",
    ]
    for r in plan["params"]["modules"]:
        name = r["module"] + (f" (x{r['repeats']})" if r["repeats"] > 1 else "")
        lines.append(f"  {name:<38}{r['params']:>16,}{r['bytes_per_device'] / 2**20:>12.1f}")
    lines.append(f"  {'total':<38}{plan['params']['total']:>16,}")
    act = m["activations"]
    sources = {"params": "shardings (exact)", "optimizer": "shardings (exact)",
               "gradients": "as the params", "other_state": "shardings (exact)",
               "batch": "per-device batch", "activations": act["source"]}
    lines += ["", f"{'memory per device':<40}{'GiB':>10}  source"]
    for key, value in m["bytes"].items():
        lines.append(f"  {key:<38}{_gib(value):>10}  {sources[key]}")
    lines.append(f"  {'total':<38}{_gib(m['total_bytes']):>10}")
    if "xla_skipped" in act:
        lines.append(f"  (no XLA memory analysis: {act['xla_skipped']})")
    elif plan["xla"]:
        lines.append(f"  (estimate beside it: {_gib(act['estimate_bytes'])} GiB; XLA compile "
                     f"{plan['xla']['compile_s']:.1f} s)")
    f = plan["flops"]
    key = plan["accelerator"]
    a = plan["accelerators"][key]
    lines += [
        "",
        f"model FLOPs per step  {f['per_step'] / 1e12:,.2f} TFLOP ({f['source']})",
        f"per device            {f['per_device'] / 1e12:,.3f} TFLOP; HBM traffic "
        f"{_gib(plan['hbm_bytes_per_device']['bytes'])} GiB",
        f"on {a['name']} ({a['bf16_tflops']:g} TFLOP/s bf16, {a['hbm_gb_s']:g} GB/s, "
        f"{a['memory_gib']:g} GiB): step {a['step_time_s'] * 1e3:,.1f} ms "
        f"({a['bound']}-bound at MFU {a['mfu_assumed']:g}), MFU {a['mfu']:.2f}, "
        f"{'fits' if a['fits'] else 'DOES NOT FIT'}",
        "",
        f"{'accelerator':<24}{'fits':>6}{'step ms':>11}{'MFU':>6}",
    ]
    for k, a in plan["accelerators"].items():
        lines.append(f"  {k:<22}{'yes' if a['fits'] else 'no':>6}"
                     f"{a['step_time_s'] * 1e3:>11,.1f}{a['mfu']:>6.2f}")
    for w in plan["warnings"]:
        lines += ["", f"WARNING: {w}"]
    if plan.get("suggestions"):
        lines += ["What would fit:"] + [f"  {s}" for s in plan["suggestions"]]
    if plan["notes"]:
        lines += ["", "Notes:"] + [f"  {n}" for n in plan["notes"]]
    lines.append(f"(planned in {plan['plan_s']:.1f} s)")
    return "\n".join(lines)


def write_json(plan: dict, workdir: str) -> str:
    """`workdir/plan.json`, written whole or not at all (temp file + rename)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "plan.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def run(config, workdir: str, num_devices: int, accelerator: str = "h100", mfu: float = 0.4,
        compile_mode: str = "auto") -> dict:
    """Plans, prints the table and (process 0) writes `workdir/plan.json`."""
    plan = make_plan(config, num_devices, accelerator, mfu, compile_mode)
    print(format_plan(plan), flush=True)
    if jax.process_index() == 0:
        print(f"wrote {write_json(plan, workdir)}", flush=True)
    return plan
