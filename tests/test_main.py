"""The command line end to end, in subprocesses: exact resume, preemption, bad flags."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, checkpoint_state, cli_command, run_cli


def _steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def _train_until_sigterm(workdir, data_dir, log_path, **overrides) -> int:
    """Starts a long run, sends SIGTERM once it has logged two steps: it must finish the
    step, save it and exit 0. Returns the step saved."""
    # stderr into a file: a pipe nobody reads while the test polls would fill with the
    # compile's log lines and block the run before its first step.
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cli_command("vit_vqgan", workdir, data_dir, total_steps=100_000,
                        checkpoint_every=100_000, **overrides),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
        )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 600  # a loaded 2-core machine compiles the step slowly
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, log_path.read_text()[-4000:]
        assert time.time() < deadline, "training never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    assert proc.returncode == 0, log_path.read_text()[-4000:]
    saved = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
    assert len(saved) == 1 and 2 <= saved[0] < 100_000
    assert _steps(workdir)[-1] == saved[0]  # the saved step is the last one logged
    return saved[0]


def test_a_run_stopped_by_sigterm_and_resumed_is_bit_identical_to_a_straight_one(
        tmp_path, mini_data_dir):
    """SIGTERM a run: it finishes its step, saves and exits 0. Resume it for 2 more steps,
    or train those steps straight: bit-identical states. Resume (the state, the data
    iterator's position, the counters) is the loop's, whatever the task: the 2D
    ViT-VQGAN (GAN and R1 on, sharded, accumulated) shows it at a fraction of the NeRF's
    trace and compile; all three launches share one compiled step."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    only_train = dict(eval_every=-1, sample_every=-1)
    stopped = _train_until_sigterm(resumed, mini_data_dir, tmp_path / "sigterm.log",
                                   **only_train)
    second = run_cli("vit_vqgan", resumed, mini_data_dir, total_steps=stopped + 2)
    assert f"restored step {stopped}" in second.stderr
    first = run_cli("vit_vqgan", straight, mini_data_dir, total_steps=stopped + 2,
                    **only_train)
    # A run that never evaluates sets up no image metrics, so has none to say are off.
    assert "FID/KID are off" not in first.stderr and "FID/KID are off" in second.stderr
    assert not list((straight / "samples").glob("*.png"))
    a, b = checkpoint_state(straight, stopped + 2), checkpoint_state(resumed, stopped + 2)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(leaves_a) == len(leaves_b) > 10
    for path, value in leaves_a:
        np.testing.assert_array_equal(np.asarray(leaves_b[path]), np.asarray(value), str(path))
    assert _steps(resumed).count(stopped + 1) == 1 and _steps(resumed)[-1] >= stopped + 2
    samples = os.listdir(resumed / "samples")
    assert any(name.endswith(".png") for name in samples)


def test_eval_and_render_modes_of_a_stage1_run(tmp_path, stage1_workdir, mini_data_dir):
    """--mode=eval and --mode=render on a VQ3D stage-1 run (random parameters: the modes'
    outputs, not a model's quality)."""
    run = tmp_path / "run"
    shutil.copytree(stage1_workdir, run)
    # --mode=eval reports PSNR and the depth and novel-view metrics into metrics.jsonl.
    done = run_cli("vq3d_stage1", run, mini_data_dir, "--mode=eval")
    with open(run / "metrics.jsonl") as f:
        last = json.loads(f.readlines()[-1])
    assert last["step"] == 0 and 0 < last["eval/psnr"] < 100
    assert last["eval/num_examples"] == 16
    for key in ("eval/depth_abs_rel", "eval/novel_psnr", "eval/novel_psnr_yaw20"):
        assert np.isfinite(last[key]), key
    # Without Inception weights FID is off, and the log says what to fetch and set.
    assert "FID/KID are off" in done.stderr and "eval.fid.inception_weights" in done.stderr
    assert "eval/fid" not in last

    # --mode=render: per image a reconstruction, depth map, orbit and mesh (or a stated skip).
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "b.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "rendered"
    done = run_cli("vq3d_stage1", run, mini_data_dir, "--mode=render", f"--images={folder}",
                   f"--output_dir={out}", "--mesh", "--mesh_resolution=16",
                   "--mesh_level=0.5")
    assert "Skipping broken.png" in done.stderr
    for name in ("a", "b"):
        assert Image.open(out / f"{name}_reconstruction.png").size == (32, 32)
        assert Image.open(out / f"{name}_depth.png").size == (32, 32)
        assert Image.open(out / f"{name}_orbit.gif").n_frames == 4
        # A mesh, or a skip for the one stated reason (any other error once hid as a skip).
        assert (out / f"{name}.ply").exists() or (
            f"No mesh for {name}: The grid holds no surface at level" in done.stderr)


@pytest.mark.parametrize("flag", ["--config.model.no_such_key=1", "--config.no_such_key=1"])
def test_unknown_config_key_is_an_error_naming_it(tmp_path, flag):
    done = subprocess.run(
        [sys.executable, "-m", "vq3d_jax.main", "--config=configs/vit_vqgan.py:tiny",
         f"--workdir={tmp_path}", flag],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "no_such_key" in done.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_eval_without_checkpoint_refuses_random_weights(tmp_path, mini_data_dir):
    cmd = cli_command("vq3d_stage1", tmp_path, mini_data_dir, "--mode=eval")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "No checkpoint" in done.stderr
