"""VQ3D stage 2: a tensor-parallel step equals the unsharded one; the CLI trains and samples."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import override, steps_per_layout, with_a_wrong_row
from float_bounds import assert_close_up_to_rounding, assert_same_steps
from PIL import Image, ImageSequence

from configs import vq3d_stage1, vq3d_stage2
from vq3d_jax.tasks import get_task
from vq3d_jax.tasks.vq3d_stage2 import load_stage1_config
from vq3d_jax.train import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, LENGTH = 64, 16


def _prior_only_config(**mesh):
    """The tiny prior on precomputed codes, no stage-1 run: what the sharded test needs."""
    config = override(vq3d_stage2.get_config("tiny"), {
        "prior.vocab_size": VOCAB, "prior.length": LENGTH, "data.codes_dir": "unused",
        "global_batch_size": 8, "optim.warmup_steps": 1, "prior.class_dropout": 0.5,
    })
    config.mesh.update(mesh)
    return config


def _codes_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"codes": rng.integers(0, VOCAB, (8, LENGTH)).astype(np.int32),
            "label": rng.integers(0, 4, (8,)).astype(np.int32)}


def test_tensor_parallel_step_equals_unsharded():
    """Two prior steps on data 2 × fsdp 2 × tensor 2 (heads, MLP and vocab split
    Megatron-style) equal the steps on one device up to float rounding
    (tests/float_bounds.py); fed one wrong row, they do not. The warm-up's first
    learning rate is 0, so both steps' gradients are taken at the initial weights; the
    second moves them by Adam's bounded step."""
    config = _prior_only_config(data=2, fsdp=2, tensor=2)
    rules = runtime.build_runtime(get_task(config), config).state_shardings.params["prior"]
    # The rules really split the heads and the MLP over 'tensor'.
    assert rules["blocks_0"]["attn"]["query_kernel"].spec[1] == "tensor"
    assert rules["blocks_0"]["mlp"]["fc1"]["kernel"].spec[1] == "tensor"
    batch = _codes_batch()
    (state_1, metrics_1), (state_8, metrics_8), (wrong_8, _) = steps_per_layout(
        _prior_only_config,
        [(jax.devices()[:1], dict(data=1, fsdp=1, tensor=1), 1),
         (None, dict(data=2, fsdp=2, tensor=2), 1)],
        batch, steps=2, corrupted=with_a_wrong_row(batch))
    assert float(metrics_1["loss/ce"]) > 3.0  # ≈ ln 64 at init: a real loss, not zero
    assert_close_up_to_rounding(metrics_8, metrics_1,
                                keys=("loss/ce", "train/grad_norm", "train/accuracy"))
    # A key bias's true gradient is 0 (it shifts every logit of a query alike): its
    # moments are rounding noise, held to the network's gradient scale like any other.
    assert_same_steps(state_8, state_1, config, steps=2)
    with pytest.raises(AssertionError, match="beyond float rounding"):
        assert_same_steps(wrong_8, state_1, config, steps=2)


def test_missing_or_mismatched_stage1_runs_are_clear_errors(tmp_path):
    config = vq3d_stage2.get_config("tiny")
    with pytest.raises(ValueError, match="stage1.workdir"):
        get_task(config)
    config.stage1.workdir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        get_task(config)
    stage1 = vq3d_stage1.get_config("tiny")
    (tmp_path / "config.json").write_text(stage1.to_json_best_effort())
    config.data.image_size = 64
    with pytest.raises(ValueError, match="32²"):
        get_task(config)
    config.data.image_size = 32
    config.prior.vocab_size = 7
    with pytest.raises(ValueError, match="vocab_size=7, but stage 1 has 512"):
        get_task(config)


def _cli(workdir, stage1_dir, data_dir, mode):
    overrides = {
        "stage1.workdir": stage1_dir, "data.name": "synthetic_scenes/mini",
        "data.data_dir": data_dir, "data.image_size": 32, "global_batch_size": 8,
        "eval.num_examples": 8, "eval.global_batch_size": 8, "total_steps": 2,
        "log_every": 1, "sample.num_images": 3, "mesh.data": 2, "mesh.fsdp": 2,
        "mesh.tensor": 2,
    }
    command = [sys.executable, "-m", "vq3d_jax.main", "--config=configs/vq3d_stage2.py:tiny",
               f"--workdir={workdir}", f"--mode={mode}",
               *(f"--config.{k}={v}" for k, v in overrides.items())]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_cli_trains_then_samples_scenes(tmp_path, stage1_workdir, mini_data_dir):
    """Train on codes encoded on the fly (tensor-parallel mesh), then --mode=sample:
    a grid PNG, per-sample orbit GIFs and depth maps."""
    workdir = tmp_path / "stage2"
    train = _cli(workdir, stage1_workdir, mini_data_dir, "train")
    assert "stage1: weights of step 0 from" in train.stderr
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    # 16 codes of 64 at init: about log2(64) = 6 bits each.
    bits = [r["train/bits_per_token"] for r in rows if "train/bits_per_token" in r]
    assert len(bits) == 2 and all(5.0 < b < 7.0 for b in bits)
    assert 5.0 < rows[-1]["eval/bits_per_token"] < 7.0

    for name in os.listdir(workdir / "samples"):
        os.remove(workdir / "samples" / name)
    _cli(workdir, stage1_workdir, mini_data_dir, "sample")
    names = sorted(os.listdir(workdir / "samples"))
    assert names == sorted(
        ["samples_00000002.png"]
        + [f"{kind}_{i:02d}_00000002.{ext}" for i in range(3)
           for kind, ext in (("orbit", "gif"), ("depth", "png"))]
    )
    grid = Image.open(workdir / "samples" / "samples_00000002.png")
    assert grid.size == (3 * 32, 2 * 32)  # 3 samples; images over depth maps
    orbit = Image.open(workdir / "samples" / "orbit_00_00000002.gif")
    # render.orbit_frames at 12 fps; GIF keeps centiseconds, and merges the durations of
    # identical consecutive frames (a random stage 1 may render some alike).
    durations = [frame.info["duration"] for frame in ImageSequence.Iterator(orbit)]
    assert orbit.size == (32, 32) and sum(durations) == pytest.approx(4 * 1000 / 12, abs=4 * 5)


def test_a_stage1_run_saved_with_one_flat_optim_block_still_loads(tmp_path):
    """config.json of runs saved before per-network optimizer blocks: optim.learning_rate,
    optim.disc_learning_rate and the shared Adam settings become the two blocks."""
    stage1 = vq3d_stage1.get_config("tiny").to_dict()
    blocks = stage1["optim"]
    stage1["optim"] = {**{k: blocks["generator"][k] for k in
                          ("warmup_steps", "decay", "b1", "b2", "grad_clip", "weight_decay",
                           "learning_rate")},
                       "disc_learning_rate": 2e-4}
    (tmp_path / "config.json").write_text(json.dumps(stage1))
    loaded = load_stage1_config(str(tmp_path))
    assert loaded.optim.generator.to_dict() == blocks["generator"]
    assert loaded.optim.discriminator.to_dict() == blocks["discriminator"]
