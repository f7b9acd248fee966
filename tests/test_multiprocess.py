"""Two JAX processes on one machine (loopback coordinator): the multi-host path."""

import json
import os
import socket
import subprocess
import sys

from conftest import stage1_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_checkpoint_and_log_once(tmp_path, mini_data_dir):
    port = _free_port()
    # The 2D decoder: the multi-host path does not depend on the head, and it compiles faster.
    overrides = {**stage1_overrides(mini_data_dir), "model.decoder": "vit2d", "total_steps": 2,
                 "checkpoint_every": 2, "log_every": 1}
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vq3d_jax.main", "--config=configs/vq3d_stage1.py:tiny",
             f"--workdir={tmp_path}", f"--coordinator_address=localhost:{port}",
             "--num_processes=2", f"--process_id={i}",
             *(f"--config.{k}={v}" for k, v in overrides.items())],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-4000:]
    assert "on 4 devices" in errors[0] and "process 1/2" in errors[1]
    # Only process 0 writes metrics: one line per step, not two.
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps.count(1) == 1 and steps.count(2) == 2  # step 2: train line + eval line
    # One checkpoint, written collectively, with each process's own iterator state.
    data_iter = tmp_path / "checkpoints" / "2" / "data_iter"
    states = [json.loads((data_iter / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    # Each state indexes its own process's shard: 2 steps × (8 global ÷ 2 processes).
    assert [s["parent"]["next_index"] for s in states] == [8, 8]
    assert (tmp_path / "checkpoints" / "2" / "state").is_dir()
