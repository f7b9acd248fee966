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
  step's jaxpr matmuls and convolutions otherwise: gathers, such as a renderer's texture
  lookups, and element-wise work are no FLOPs, what they make counts as activations), and
  the step time and MFU they predict on an accelerator of `ACCELERATORS` (a roofline:
  `predict`);
- when a device's memory would overflow: the largest contributors and what would fit.

This module makes and prints the plan; vq3d_jax/planning/ holds its parts: `memory` (the
abstract mesh, batch and state, activations, XLA's analysis) and `roofline` (the
accelerators, FLOPs, step time, what would fit).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time

import flax.linen as nn
import jax
from jax.sharding import AbstractMesh

from vq3d_jax.models import lpips
from vq3d_jax.planning.memory import (
    abstract_batch,
    abstract_mesh,
    activation_peak,
    compile_decision,
    example_shapes,
    module_params,
    state_bytes,
    trace_step,
    xla_analysis,
)
from vq3d_jax.planning.roofline import (
    ACCELERATORS,
    GIB,
    Accelerator,
    hbm_bytes_estimate,
    model_flops,
    predict,
    suggestions,
)
from vq3d_jax.tasks import get_task
from vq3d_jax.train import runtime
from vq3d_jax.train import sharding as sharding_lib

# Stage 2 without a stage-1 run: (codebook size, codes per image) of the stage-1 preset it
# would use: configs/vq3d_stage1.py:tiny (512, (32/4)²) and :imagenet256 (8192, (256/8)²,
# as bench/stage2_train_step.py assumes).
STAGE2_DEFAULT_CODES = {"tiny": (512, 64), "imagenet": (8192, 1024)}


# -- the config ------------------------------------------------------------------------
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
    loss = config.get("loss")
    if loss is not None and loss.get("require_lpips") and not loss.lpips_weights:
        # Mimic3D stage 2 refuses to build without LPIPS weights, which a trace never reads.
        loss.lpips_weights = lpips.TRACED_WEIGHTS
        notes.append(f"no loss.lpips_weights: the imitation's LPIPS (VGG16 at "
                     f"{loss.patch_size}² patches) is traced with zero weights, no file: its "
                     "convolutions count in the FLOPs and activations")
    return config, notes


# -- the plan ----------------------------------------------------------------------------
def _layout(config, num_devices: int) -> tuple[AbstractMesh, int, int]:
    """(mesh, per-device batch, grad_accum_steps), or a one-line error when they do not fit."""
    mesh = abstract_mesh(config.mesh, num_devices)
    steps = runtime.check_batch_layout(config, mesh)
    return mesh, int(config.global_batch_size) // sharding_lib.batch_divisor(mesh), steps


def _activations(task, config, state, shapes, local: int, num_devices: int,
                 compile_mode: str, gradients: int) -> tuple[int, dict, dict, dict | None]:
    """(activation bytes per device, how they were found, model FLOPs, XLA's analysis)."""
    # Traces at the global batch and twice it (sizes the config's program is made for,
    # unlike a per-device batch of 1) tell activations from weight-sized values; the first
    # also gives the jaxpr FLOPs.
    batch = int(config.global_batch_size)
    small = trace_step(task, state, shapes, batch)
    large = trace_step(task, state, shapes, 2 * batch)
    estimate = round(activation_peak(small, large, local / batch))
    flops = model_flops(task, config, small)
    why_not = compile_decision(compile_mode, small, num_devices)
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
    _, abstract = runtime.abstract_state(boxed, mesh, rules, fallback)
    memory = state_bytes(boxed, mesh, rules, fallback)
    shapes = example_shapes(task, config)
    memory["batch"] = sharding_lib.tree_bytes(abstract_batch(shapes, local), per_device=False)
    memory["activations"], activations, flops, xla = _activations(
        task, config, nn.meta.unbox(boxed), shapes, local, num_devices, compile_mode,
        memory["gradients"])
    total = sum(memory.values())
    notes += flops.pop("notes", [])

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
            key: {**dataclasses.asdict(accel), "fits": total <= accel.memory_gib * GIB,
                  **predict(per_device_flops, hbm, accel, mfu)}
            for key, accel in ACCELERATORS.items()},
        "notes": notes,
        "warnings": [],
    }
    chosen = ACCELERATORS[accelerator]
    if total > chosen.memory_gib * GIB:
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
    named = ", ".join(f"{k} {v / GIB:.1f} GiB" for v, k in parts)
    top = ", ".join(f"{r['module']} ({r['params'] / 1e6:.1f}M params)" for r in modules[:3])
    return (f"{total / GIB:.1f} GiB per device overflows the {accel.memory_gib:g} GiB of "
            f"{accel.name}: largest {named}; largest modules {top}.")


# -- output ------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


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
