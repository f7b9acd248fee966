"""Two JAX processes on one machine (loopback coordinator): the multi-host path."""

import json
import os
import socket
import subprocess
import sys
import time

import ml_collections
from conftest import REPO, checkpoint_state
from float_bounds import assert_same_steps
from slow_end_of_run import SHUTDOWN_BARRIER_S

# Generous for a loaded 2-core machine: each launch compiles the sharded step.
LAUNCH_TIMEOUT_S = 900


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
        "checkpoint_every": 1, "log_every": 1, "optim.decay": "constant",
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "grad_accum_steps": 2,
    }
    return [f"--workdir={workdir}", "--config=configs/vq3d_stage2.py:tiny", *flags,
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def _launch(args, log_path, env=None, slow_end_s=None) -> subprocess.Popen:
    """The command line with `args`, its stderr into `log_path` (a file, not a pipe: a
    pipe nobody reads while waiting on the other process fills and blocks the writer);
    with `slow_end_s`, through tests/slow_end_of_run.py."""
    launcher = (["-m", "vq3d_jax.main"] if slow_end_s is None
                else ["tests/slow_end_of_run.py", str(slow_end_s)])
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, *launcher, *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


def _run(procs, logs) -> list[str]:
    """Waits for every process; each must exit 0. Returns their stderr. When one fails,
    the others (which would wait minutes for it at a barrier) are stopped."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while any(p.poll() is None for p in procs):
        if any(p.returncode for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            break
        time.sleep(0.5)
    for p in procs:
        p.wait()
    errors = [log.read_text() for log in logs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-4000:]
    return errors


def _two_processes(log_dir, *args, slow_end_s=None) -> list[str]:
    """`_command` as 2 processes × 4 simulated devices: the 8-device global mesh of the
    one-process run. With `slow_end_s`, both through tests/slow_end_of_run.py (the
    coordinator, process 0, sets the shutdown barrier), process 1 ending that much later.
    Returns each process's stderr."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace(
        "device_count=8", "device_count=4")}
    logs = [log_dir / f"process_{i}_{args[3]}.log" for i in range(2)]
    delays = [None, None] if slow_end_s is None else [0.0, slow_end_s]
    procs = [_launch([*_command(*args), f"--coordinator_address=localhost:{port}",
                      "--num_processes=2", f"--process_id={i}"], logs[i], env, delays[i])
             for i in range(2)]
    return _run(procs, logs)


def test_two_processes_train_stop_and_resume_like_one_and_wait_for_a_slow_one(
        tmp_path, stage1_workdir, mini_data_dir):
    """Train 1 step on 2 processes, stop, resume to 2: the state equals that of 2
    uninterrupted steps in one process on the same 8-device mesh, up to float rounding.
    Each process reads only its rows of every global batch; the checkpoint is written
    collectively. The first launch's process 1 ends its run longer after process 0 than
    JAX's runtime shutdown barrier waits: both meet at the end-of-run barrier first and
    exit 0, the checkpoint intact."""
    straight = tmp_path / "straight"
    _run([_launch(_command(straight, stage1_workdir, mini_data_dir, 2), tmp_path / "one.log")],
         [tmp_path / "one.log"])
    workdir = tmp_path / "two_processes"
    slow_end_s = 2.5 * SHUTDOWN_BARRIER_S
    errors = _two_processes(tmp_path, workdir, stage1_workdir, mini_data_dir, 1,
                            slow_end_s=slow_end_s)
    assert "on 8 devices" in errors[0] and "process 1/2" in errors[1]
    assert "waiting up to 1800 s for the others" in errors[0]
    # One checkpoint, with each process's own iterator state: 1 step × 8 ÷ 2 rows.
    data_iter = workdir / "checkpoints" / "1" / "data_iter"
    states = [json.loads((data_iter / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert [s["parent"]["next_index"] for s in states] == [4, 4]

    errors = _two_processes(tmp_path, workdir, stage1_workdir, mini_data_dir, 2)
    assert "restored step 1" in errors[0]
    # Only process 0 writes metrics: one line per step, not two.
    with open(workdir / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2]

    # Not bit-equal: the processes' gradients are summed by the cross-process (gloo)
    # all-reduce, in another order than one process's in-memory reduction. The warm-up's
    # first learning rate is 0, so both steps' gradients are taken at the same weights
    # (tests/float_bounds.py): Adam's moments agree to rounding, the weights within
    # Adam's step bound.
    with open(straight / "config.json") as f:
        config = ml_collections.ConfigDict(json.load(f))
    for step in (1, 2):
        assert_same_steps(checkpoint_state(workdir, step), checkpoint_state(straight, step),
                          config, steps=step)
