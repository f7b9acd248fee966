"""Test set-up: 8 simulated CPU devices, set before jax is first imported.

The pytest-xdist workers (`-n auto` in pyproject.toml) and the CLI subprocesses inherit
this environment from the first process that imports this file.
"""

import os
import shutil
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
# One persistent compilation cache per test session, shared by the workers and the CLI
# subprocesses: runs of the same config compile once.
_OWN_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="vq3d_jax_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
# LLVM at -O1 instead of -O2: measured on a VQ3D stage-1 step, init compiles in 15 s
# instead of 25 and the step in 51 instead of 62, and runs as fast (-O0 compiled the
# memorisation test's step no faster than -O1).
_TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8",
                   "--xla_backend_optimization_level=1")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [f for f in _TEST_XLA_FLAGS if f not in os.environ.get("XLA_FLAGS", "")]).strip()
# Grain worker processes and absl logging read parsed flags.
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


def pytest_unconfigure(config):
    """The process that made the session's compilation cache removes it (the workers
    inherit it, so never own it)."""
    if _OWN_CACHE_DIR is not None:
        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, at most 4 (each simulates 8 devices and compiles
    whole training steps)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture(scope="session")
def mini_data_dir(tmp_path_factory):
    """The `mini` synthetic scenes (32², 128/32/32 scenes), built once per session."""
    import ml_collections

    from vq3d_jax.datasets import pipeline

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data = ml_collections.ConfigDict({"name": "synthetic_scenes/mini", "data_dir": data_dir})
    pipeline.prepare(data)
    return data_dir


@pytest.fixture(scope="session")
def stage1_workdir(tmp_path_factory, mini_data_dir):
    """A tiny stage-1 run of random parameters (`runtime.write_random_run`): any parameters
    serve to compare encodings and to exercise decoding."""
    from configs import vq3d_stage1
    from vq3d_jax.tasks import get_task
    from vq3d_jax.train import runtime

    workdir = tmp_path_factory.mktemp("stage1")
    config = override(vq3d_stage1.get_config("tiny"), stage1_overrides(mini_data_dir))
    runtime.write_random_run(get_task(config), config, str(workdir))
    return workdir


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_command(preset, workdir, data_dir, *flags, **overrides) -> list[str]:
    """The CLI tests' run of `configs/<preset>.py:tiny` ("vit_vqgan" or "vq3d_stage1"),
    shrunk by `tiny_overrides` (and `stage1_overrides`), on data=2 × fsdp=2 × tensor=2
    devices with 2 micro-batches per step."""
    import sys

    shrink = stage1_overrides if preset == "vq3d_stage1" else tiny_overrides
    overrides = {**shrink(data_dir), "log_every": 1, "mesh.data": 2, "mesh.fsdp": 2,
                 "mesh.tensor": 2, "grad_accum_steps": 2, **overrides}
    return [sys.executable, "-m", "vq3d_jax.main", f"--config=configs/{preset}.py:tiny",
            f"--workdir={workdir}", *flags, *(f"--config.{k}={v}" for k, v in overrides.items())]


def run_cli(preset, workdir, data_dir, *flags, **overrides):
    """`cli_command` run to the end; it must succeed."""
    import subprocess

    done = subprocess.run(cli_command(preset, workdir, data_dir, *flags, **overrides),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def checkpoint_state(workdir, step):
    """The train state saved at `step`, restored as numpy arrays (whatever devices and
    processes saved it)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            checkpointer.metadata(path).item_metadata.tree)
    return checkpointer.restore(path, restore_args=as_numpy)


def override(config, overrides: dict):
    """Sets dotted keys ('model.codebook_size') of a ConfigDict, as --config.* flags do."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def tiny_overrides(data_dir: str) -> dict:
    """The CLI/loop tests' shrunken `tiny` preset: 32² images, GAN on from step 0."""
    return {
        "data.name": "synthetic_scenes/mini",
        "data.data_dir": data_dir,
        "data.image_size": 32,
        "global_batch_size": 8,
        "eval.num_examples": 16,
        "eval.global_batch_size": 8,
        "loss.adversarial_start_step": 0,
        # No cosine decay: the program then does not depend on total_steps, so
        # runs of different lengths share one compiled step.
        "optim.generator.decay": "constant",
        "optim.discriminator.decay": "constant",
        "model.codebook_size": 64,
        "model.disc_channel_base": 256,
        "model.disc_channel_max": 32,
    }


def stage1_overrides(data_dir: str) -> dict:
    """`tiny_overrides` plus the stage-1 NeRF decoder shrunk: 16² renders, 6 + 6 samples."""
    return {**tiny_overrides(data_dir), **NERF_TINY_OVERRIDES}


NERF_TINY_OVERRIDES = {
    "model.patch_size": 8,  # 4 × 4 tokens at 32², as the tests' codes expect
    "model.plane_resolution": 16,
    "model.plane_channels": 8,
    "model.nerf_hidden": 16,
    "render.resolution": 16,
    "render.num_samples": 6,
    "render.num_importance": 6,
    "render.orbit_frames": 4,
    # One render less to compile per eval: tests/test_vq3d_stage1.py covers the figure.
    "render.multiview_yaw_deg": 0.0,
}


def tiny_task_config(stage1=False, **mesh):
    """The shrunken tiny 2D (or stage-1) config, no dataset: for step-level tests."""
    from configs import vit_vqgan, vq3d_stage1

    config = (vq3d_stage1 if stage1 else vit_vqgan).get_config("tiny")
    override(config, {**tiny_overrides(""), **(NERF_TINY_OVERRIDES if stage1 else {})})
    config.mesh.update(mesh)
    return config


def steps_per_layout(make_config, layouts, batch, *, steps=1, corrupted=None) -> list:
    """(state, metrics) on the host after `steps` train steps of `make_config()` on `batch`
    for each (devices, mesh, grad_accum_steps) layout, every run starting from the first
    layout's initial state (resharded: one init compiled, not one per layout). With a
    `corrupted` batch, the last layout's run on it is appended: what its comparison
    with the others must reject."""
    import jax

    from vq3d_jax.tasks import get_task
    from vq3d_jax.train import runtime, sharding

    results, initial = [], None
    for i, (devices, mesh, accumulate) in enumerate(layouts):
        config = make_config()
        config.mesh.update(mesh)
        config.grad_accum_steps = accumulate
        rt = runtime.build_runtime(get_task(config), config, devices=devices)
        if initial is None:
            initial = jax.device_get(runtime.init_state(rt))
        step = runtime.compile_train_step(rt)
        last = i == len(layouts) - 1
        for data in [batch] + ([corrupted] if last and corrupted is not None else []):
            state = jax.device_put(initial, rt.state_shardings)
            with rt.scope():
                for _ in range(steps):
                    state, metrics = step(state, sharding.global_batch(data, rt.mesh))
            results.append(jax.device_get((state, metrics)))
    return results


def with_a_wrong_row(batch: dict, row: int = 3) -> dict:
    """`batch` with example `row` replaced by the one before it: what a pipeline or
    sharding bug that reads a wrong row feeds a step."""
    wrong = {k: v.copy() for k, v in batch.items()}
    for value in wrong.values():
        value[row] = value[row - 1]
    return wrong


def random_batch(seed=0, n=8, size=32):
    """Random uint8 images and depths [n, size, size] under a band of sky (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    depth = rng.uniform(3.0, 9.0, (n, size, size)).astype(np.float32)
    depth[:, :4] = np.inf  # sky
    return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), "depth": depth}
