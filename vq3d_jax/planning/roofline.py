"""The accelerators a plan is held against, the step time its FLOPs and HBM traffic
predict on each (a roofline), and what would bring a step under a device's memory."""

from __future__ import annotations

import dataclasses

from jax.sharding import AbstractMesh, AxisType

from vq3d_jax.models import ar_prior, vit_vqgan
from vq3d_jax.planning.memory import state_bytes
from vq3d_jax.train import flops as flops_lib
from vq3d_jax.train import sharding as sharding_lib

GIB = 2**30


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
    if config.task == "gan":
        out["per_step_cheaper_conds"] = flops_lib.jaxpr_flops(global_jaxpr, branch=min)
        out["notes"] = _gan_flops_notes(config, out["per_step_cheaper_conds"])
    return out


def _gan_flops_notes(config, cheaper: float) -> list[str]:
    """What the jaxpr count of a GAN step holds: its lazy regularisers run under lax.cond,
    which the count takes at the costlier branch (`cheaper`: every cond at its cheaper
    one), and a renderer's texture lookups are gathers, which are no FLOPs."""
    loss = config.loss
    lazy = [f"R1 every {loss.r1_every} steps"]
    if loss.get("density_reg", 0) > 0:
        lazy.append(f"the density regulariser every {loss.density_reg_every}")
    notes = [f"model FLOPs per step take every lax.cond at its costlier branch: a step that "
             f"runs the lazy regularisers ({', '.join(lazy)}); with every cond at its cheaper "
             f"branch (none due) a step is {cheaper / 1e12:,.2f} TFLOP"]
    if config.model.head == "triplane":
        notes.append("the tri-plane lookups are gathers, no FLOPs: their features count as "
                     "memory (activations, and through them HBM traffic); the FLOPs are the "
                     "convolutions and the decoder MLP's matmuls")
    return notes


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
    limit = accel.memory_gib * GIB
    act, fixed = memory["activations"], memory["batch"]

    def on_mesh(sizes: dict, activations: float) -> float:
        mesh = AbstractMesh(tuple(sizes[a] for a in sharding_lib.MESH_AXES),
                            sharding_lib.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
        state = state_bytes(ctx["boxed"], mesh, ctx["rules"], ctx["fallback_min_mb"])
        return sum(state.values()) + activations + fixed

    def verdict(total: float) -> str:
        return f"{total / GIB:.1f} GiB per device" + ("" if total <= limit else ", still over")

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
