"""Two JAX processes on one machine (loopback coordinator): the multi-host path."""

import json
import os
import socket
import subprocess
import sys

from conftest import REPO, assert_params_close_up_to_adam_noise, checkpoint_state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _command(workdir, stage1_dir, data_dir, total_steps, *flags) -> list[str]:
    """VQ3D stage 2 (tiny) on codes the frozen random stage 1 encodes in the step from the
    images each process reads: the pipeline, the sharded step with accumulation and the
    checkpoints of a multi-host run, compiled in seconds; no eval or samples (the resume
    is the test: the samples' NeRF renders compiled longer than the step)."""
    overrides = {
        "stage1.workdir": stage1_dir, "data.name": "synthetic_scenes/mini",
        "data.data_dir": data_dir, "data.image_size": 32, "global_batch_size": 8,
        "eval_every": -1, "sample_every": -1, "total_steps": total_steps,
        "checkpoint_every": 2, "log_every": 1,
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "grad_accum_steps": 2,
    }
    return [sys.executable, "-m", "vq3d_jax.main", "--config=configs/vq3d_stage2.py:tiny",
            f"--workdir={workdir}", *flags, *(f"--config.{k}={v}" for k, v in overrides.items())]


def _two_processes(*args) -> list[str]:
    """`_command` as 2 processes × 4 simulated devices: the 8-device global mesh of the
    one-process run. Returns each process's stderr."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace(
        "device_count=8", "device_count=4")}
    procs = [
        subprocess.Popen(
            _command(*args, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                     f"--process_id={i}"),
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-4000:]
    return errors


def test_two_processes_train_stop_and_resume_like_one(tmp_path, stage1_workdir,
                                                      mini_data_dir):
    """Train 2 steps on 2 processes, stop, resume to 4: the state equals that of 4
    uninterrupted steps in one process on the same 8-device mesh. Each process reads
    only its rows of every global batch; the checkpoint is written collectively."""
    straight = tmp_path / "straight"
    done = subprocess.run(_command(straight, stage1_workdir, mini_data_dir, 4), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    workdir = tmp_path / "two_processes"
    errors = _two_processes(workdir, stage1_workdir, mini_data_dir, 2)
    assert "on 8 devices" in errors[0] and "process 1/2" in errors[1]
    # One checkpoint, with each process's own iterator state: 2 steps × 8 ÷ 2 rows.
    data_iter = workdir / "checkpoints" / "2" / "data_iter"
    states = [json.loads((data_iter / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert [s["parent"]["next_index"] for s in states] == [8, 8]

    errors = _two_processes(workdir, stage1_workdir, mini_data_dir, 4)
    assert "restored step 2" in errors[0]
    # Only process 0 writes metrics: one line per step, not two.
    with open(workdir / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps.count(1) == 1 and steps.count(3) == 1

    # Not bit-equal: from the first step on, the processes' gradients are summed by the
    # cross-process (gloo) all-reduce, in another order than one process's in-memory
    # reduction, so weights differ by float rounding (measured: 1e-8 on kernels after
    # 2 steps, before any resume), which Adam amplifies where a gradient is near ε.
    assert_params_close_up_to_adam_noise(checkpoint_state(workdir, 4)["params"],
                                         checkpoint_state(straight, 4)["params"],
                                         max_step=2e-4)  # lr 1e-3 × (1+2+3+4)/50 (warmup)
