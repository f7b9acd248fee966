"""--mode=plan: parameter counts against a real init, FLOPs against the benchmarks' counts,
no allocation, and the CLI on the stage-2 large preset at fsdp=64."""

import json
import math
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import tiny_task_config

from bench.common import jaxpr_flops_per_step
from configs import mimic3d, vq3d_stage2
from vq3d_jax import plan
from vq3d_jax.models import ar_prior, lpips
from vq3d_jax.tasks import get_task
from vq3d_jax.train import runtime
from vq3d_jax.train.flops import count_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage2_tiny():
    """Stage 2 tiny on precomputed codes of the tiny stage 1 (512 codes, 8×8 per image)."""
    config = vq3d_stage2.get_config("tiny")
    config.prior.update(vocab_size=512, length=64)
    config.data.codes_dir = "unused"
    return config


def _live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


@pytest.fixture(scope="module")
def stage2_plan():
    """The plan of stage 2 tiny on 8 devices (compiled: its step is small)."""
    before = _live_bytes()
    result = plan.make_plan(_stage2_tiny(), 8)
    assert _live_bytes() - before < 2**16  # nothing of the state's size was allocated
    return result


@pytest.fixture(scope="module")
def vit_vqgan_plan():
    """The 2D autoencoder tiny with a discriminator (two networks), fsdp 4 × data 2."""
    config = tiny_task_config(data=2, fsdp=4)
    shapes = nn.meta.unbox(jax.eval_shape(get_task(config).init_state, jax.random.PRNGKey(0)))
    return config, shapes, plan.make_plan(config, 8, compile_mode="never")


def _rows(params) -> dict[str, int]:
    """Parameters per (first key / second key, digits as *), from any tree of arrays."""
    rows: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = re.sub(r"\d+", "*", "/".join(k.key for k in path[:2]))
        rows[name] = rows.get(name, 0) + math.prod(leaf.shape)
    return rows


def test_param_counts_equal_a_real_init_per_module(stage2_plan):
    config = _stage2_tiny()
    state = runtime.init_state(runtime.build_runtime(get_task(config), config), pretrained=False)
    real = _rows(state.params)
    assert {r["module"]: r["params"] for r in stage2_plan["params"]["modules"]} == real
    assert stage2_plan["params"]["total"] == sum(p.size for p in jax.tree.leaves(state.params))
    blocks = next(r for r in stage2_plan["params"]["modules"] if r["module"] == "prior/blocks_*")
    assert blocks["repeats"] == ar_prior.PRESETS["tiny"][0]


def test_module_rows_of_two_networks(vit_vqgan_plan):
    _, shapes, result = vit_vqgan_plan
    rows = {r["module"]: r["params"] for r in result["params"]["modules"]}
    assert rows == _rows(shapes.params)
    assert {name.split("/")[0] for name in rows} == {"generator", "discriminator"}


def test_state_bytes_per_device_follow_the_shardings(vit_vqgan_plan):
    _, _, result = vit_vqgan_plan
    memory = result["memory_per_device"]["bytes"]
    assert result["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert memory["gradients"] == memory["params"]
    # Adam's two moments per parameter (and a few counters); fsdp splits the big kernels.
    assert 2 * memory["params"] <= memory["optimizer"] < 2 * memory["params"] + 2**12
    assert memory["params"] < result["params"]["bytes_total"]
    assert result["per_device_batch"] == 1 and memory["activations"] > 0


def test_flops_equal_the_benchmarks_counts(stage2_plan, vit_vqgan_plan):
    # Stage 2: bench/stage2_train_step.py's analytic count.
    config = _stage2_tiny()
    task = get_task(config)
    expected = 3 * config.global_batch_size * ar_prior.analytic_flops_per_sequence(
        task.dims, task.length, task.vocab_size)
    assert stage2_plan["flops"]["per_step"] == expected
    # The 2D autoencoder: bench/train_step.py's jaxpr count of the step on its batch.
    config, state, result = vit_vqgan_plan
    n, size = config.global_batch_size, config.data.image_size
    batch = {"image": jax.ShapeDtypeStruct((n, size, size, 3), np.uint8)}
    assert result["flops"]["per_step"] == jaxpr_flops_per_step(config, "model", state, batch)
    assert 0 < result["flops"]["analytic_autoencoder_per_step"] < result["flops"]["per_step"]


def test_the_estimate_is_near_xlas_memory_analysis(stage2_plan):
    activations = stage2_plan["memory_per_device"]["activations"]
    assert activations["source"] == "xla_memory_analysis"
    xla = stage2_plan["memory_per_device"]["bytes"]["activations"]
    assert 0.5 * xla < activations["estimate_bytes"] < 2 * xla


def test_overflow_names_the_largest_parts_and_what_would_fit(monkeypatch):
    tiny = plan.Accelerator("tiny", 1.0, 1.0, memory_gib=2e-4)  # 210 kB
    monkeypatch.setitem(plan.ACCELERATORS, "tiny", tiny)
    config = _stage2_tiny()
    result = plan.make_plan(config, 8, accelerator="tiny", compile_mode="never")
    assert not result["accelerators"]["tiny"]["fits"]
    (warning,) = result["warnings"]
    assert "overflows" in warning and "activations" in warning and "prior/" in warning
    text = " ".join(result["suggestions"])
    assert "--config.mesh.data=1 --config.mesh.fsdp=8" in text
    assert "--config.mesh.fsdp=4 (32 devices, per-device batch 1)" in text
    assert "--config.grad_accum_steps=4" in text and "--config.prior.remat=True" in text
    assert "WARNING" in plan.format_plan(result)


def test_mimic3d_stage2_at_512_plans_without_lpips_weights():
    """The README's command: Mimic3D stage 2 on 8 H100s, with no LPIPS file and no stage-1
    run. Its rows are the networks the config builds when it imitates with L1 (the same
    networks, no LPIPS), module for module; the traced LPIPS is all of VGG16. (~23 s of
    CPU, two traces of the 512² step; a real init, even of tiny_stage2, would add ~19 s
    compiling the generator's forward.)"""
    config = mimic3d.get_config("ffhq512_stage2")
    result = plan.make_plan(config, 8, accelerator="h100")
    rows = {r["module"]: r["params"] for r in result["params"]["modules"]}
    config.loss.require_lpips = False
    shapes = jax.eval_shape(get_task(config).init_state, jax.random.PRNGKey(0))
    assert rows == _rows(nn.meta.unbox(shapes).params)
    # Stage 2's patch D and detail planes' 3D super-resolution, beside the 3D-aware branch.
    assert {"patch_discriminator/b*_conv*", "generator/plane_sr",
            "generator/aware_branch"} <= rows.keys()
    assert result["per_device_batch"] == 4 and result["accelerators"]["h100"]["fits"]
    assert any("LPIPS (VGG16 at 64² patches)" in note for note in result["notes"])
    # The traced LPIPS: VGG16's 13 convolutions on both images and the 5 linear heads.
    size, channels, expected = 64, 3, 0
    for g, widths in enumerate(lpips.BLOCK_WIDTHS):
        for width in widths:
            expected += 2 * 2 * (size >> g) ** 2 * 9 * channels * width
            channels = width
        expected += 2 * (size >> g) ** 2 * widths[-1]
    image = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    assert count_flops(lpips.make_lpips_fn(lpips.TRACED_WEIGHTS), image, image) == expected


def test_a_mesh_the_devices_do_not_fit_is_one_clear_error():
    config = _stage2_tiny()
    config.mesh.update(data=1, fsdp=3)
    with pytest.raises(ValueError, match=r"needs 3 devices, 8 are available"):
        plan.make_plan(config, 8)
    config.mesh.update(data=-1, fsdp=8)
    with pytest.raises(ValueError, match="global_batch_size=32 is not divisible"):
        plan.make_plan(config, 64)
    with pytest.raises(ValueError, match="--plan_accelerator='tpu'"):
        plan.make_plan(_stage2_tiny(), 8, accelerator="tpu")


def test_cli_plans_stage2_large_at_fsdp64_without_parameters(tmp_path):
    """The 1.05 B-parameter prior on 64 devices, planned by a process that never holds its
    parameters (its speed, 16-26 s on two cores, is the README's figure, not a test's)."""
    # Through a fresh parent whose only child is the plan: RUSAGE_CHILDREN of this test
    # process would report the largest of every CLI run the suite made before.
    peak_of_child = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
                     "file=sys.stderr); sys.exit(done.returncode)")
    done = subprocess.run(
        [sys.executable, "-c", peak_of_child, sys.executable, "-m", "vq3d_jax.main",
         "--config=configs/vq3d_stage2.py:imagenet256_large", "--mode=plan",
         "--config.mesh.fsdp=64", f"--workdir={tmp_path}", "--plan_accelerator=v5p"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "prior/blocks_* (x36)" in done.stdout and "TPU v5p" in done.stdout
    with open(tmp_path / "plan.json") as f:
        result = json.load(f)
    assert result["num_devices"] == 64 and result["per_device_batch"] == 8
    assert result["mesh"] == {"data": 1, "fsdp": 64, "tensor": 1}
    assert result["params"]["total"] > 1e9
    memory = result["memory_per_device"]
    assert memory["bytes"]["params"] < 1.1 * result["params"]["bytes_total"] / 64
    assert memory["activations"]["source"] == "estimate"  # remat: no CPU compile
    assert result["accelerators"]["v5p"]["fits"]
    assert result["flops"]["per_step"] == 3 * 512 * ar_prior.analytic_flops_per_sequence(
        ar_prior.preset_dims("large"), 1024, 8192)
    # Params and Adam moments alone are 12.6 GB in float32; the process peaked far below.
    state_bytes = 3 * result["params"]["bytes_total"]
    peak_rss = int(done.stderr.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB
    assert peak_rss < state_bytes / 4, (peak_rss, state_bytes)
