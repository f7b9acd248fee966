"""Failure modes, each injected: non-finite updates, a full disk, SIGTERM in an eval pass,
wrong data settings, a damaged checkpoint. What must hold: a clear one-line error or a
counted skip, and nothing already written lost."""

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_task_config
from test_train_loop import _CountingIterator

from vq3d_jax.datasets import pipeline
from vq3d_jax.train.checkpoint import Checkpointer, CheckpointWriteError
from vq3d_jax.train.loop import train
from vq3d_jax.train.nonfinite import NonFiniteLossError
from vq3d_jax.train.runtime import build_runtime, init_state
from vq3d_jax.train.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS, GRAD_NORM, UPDATE = 0, 1, 2  # the batch column each one is read from


class _InjectedTask:
    """w (random: incompressible on disk) += column 2 of the batch; the loss is column 0's
    mean, the gradient norm column 1's. A NaN in one column is a NaN loss, a NaN gradient
    norm under a finite loss, or a non-finite update under finite metrics (as a
    discriminator's NaN gradient shows)."""

    train_keys = eval_keys = ("image",)

    def __init__(self, size: int = 4):
        self.size = size

    def init_state(self, rng):
        w = nn.LogicallyPartitioned(jax.random.uniform(rng, (self.size,)), ("embed",))
        return TrainState(step=jnp.zeros((), jnp.int32), params={"w": w}, opt_state={}, rng=rng)

    def train_step(self, state, batch):
        x = batch["image"]
        new = state.replace(step=state.step + 1, params={"w": state.params["w"] + x[0, UPDATE]})
        return new, {"loss/total": jnp.mean(x[:, LOSS]),
                     "train/grad_norm": jnp.mean(x[:, GRAD_NORM])}

    def eval_step(self, state, batch):
        return {"value": batch["image"][:, LOSS] + state.params["w"][0]}

    def sample(self, state, batch):
        return {"grid": jnp.zeros((2, 2, 3), jnp.uint8)}


class _Batches(_CountingIterator):
    """Batch i: loss column i, the others 1; `bad[i]` names a column made non-finite, and
    `before[i]` runs before batch i is handed out."""

    def __init__(self, bad=None, before=None):
        super().__init__()
        self.bad, self.before = bad or {}, before or {}

    def __next__(self):
        self.i += 1
        self.before.get(self.i, lambda: None)()
        image = np.tile(np.array([self.i, 1.0, 1.0], np.float32), (8, 1))
        if self.i in self.bad:
            image[:, self.bad[self.i]] = np.inf if self.bad[self.i] == UPDATE else np.nan
        return {"image": image}


def _config(**updates):
    config = tiny_task_config(data=8)
    config.update({"eval_every": 0, "sample_every": 0, **updates})
    return config


def _records(workdir) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def _saved_states(directory) -> dict[int, dict]:
    return {int(s): ocp.StandardCheckpointer().restore(os.path.join(directory, s, "state"))
            for s in os.listdir(directory) if s.isdigit()}


def test_skip_mode_keeps_the_state_counts_each_skip_and_resumes_the_count(tmp_path, caplog):
    workdir = str(tmp_path)
    bad = {2: LOSS, 4: GRAD_NORM, 5: UPDATE}
    config = _config(total_steps=3, checkpoint_every=3, log_every=2, nonfinite="skip")
    rt = build_runtime(_InjectedTask(), config)
    initial = np.asarray(init_state(rt).params["w"])
    train(rt, workdir, _Batches(bad))
    config.total_steps = 6  # the same run, resumed after step 3
    state, step = train(rt, workdir, _Batches(bad))

    assert step == 6 and int(state.step) == 3  # updates 1, 3 and 6 were applied
    np.testing.assert_allclose(state.params["w"], initial + 3.0)
    records = _records(workdir)
    assert [records[s]["train/skipped_steps"] for s in (2, 3, 4, 6)] == [1, 1, 2, 3]
    # Log means leave skipped updates out; an interval of skips alone logs no loss.
    assert records[2]["loss/total"] == 1.0 and records[6]["loss/total"] == 6.0
    assert "loss/total" not in records[4]
    warnings = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert warnings == [
        "Step 2: non-finite ['loss/total']; update skipped (1 skipped so far).",
        "Step 4: non-finite ['train/grad_norm']; update skipped (2 skipped so far).",
        "Step 5: non-finite updated state (losses and gradient norm finite); update skipped "
        "(3 skipped so far).",
    ]
    saved = _saved_states(os.path.join(workdir, "checkpoints"))
    assert sorted(saved) == [3, 6]
    assert all(np.isfinite(leaf).all() for s in saved.values() for leaf in jax.tree.leaves(s))


def test_stop_mode_names_a_nan_gradient_norm_under_a_finite_loss(tmp_path):
    config = _config(total_steps=5, checkpoint_every=1, log_every=5)
    rt = build_runtime(_InjectedTask(), config)
    with pytest.raises(NonFiniteLossError, match=r"\['train/grad_norm'\] at step 3"):
        train(rt, str(tmp_path), _Batches({3: GRAD_NORM}))
    assert sorted(_saved_states(tmp_path / "checkpoints")) == [1, 2]


@contextlib.contextmanager
def _file_size_limit(num_bytes: int):
    """Writes past `num_bytes` fail (EFBIG) as on a full disk: a real OS error, raised in
    TensorStore's writer like ENOSPC would be (a root process ignores permission bits)."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_save_onto_a_full_disk_is_one_clear_error_and_the_next_start_resumes(tmp_path):
    workdir, directory = str(tmp_path), str(tmp_path / "checkpoints")
    # 4 MB of weights: the save's data file passes the 1 MB limit, metrics.jsonl does not.
    config = _config(total_steps=5, checkpoint_every=1, log_every=1, keep_checkpoints=2,
                     async_checkpointing=False)
    rt = build_runtime(_InjectedTask(size=2**20), config)
    initial = np.asarray(init_state(rt).params["w"])
    with contextlib.ExitStack() as disk_full:
        batches = _Batches(before={3: lambda: disk_full.enter_context(_file_size_limit(2**20))})
        with pytest.raises(CheckpointWriteError) as failure:
            train(rt, workdir, batches)
    message = str(failure.value)
    assert f"Could not write checkpoint step 3 to {directory}" in message
    assert "File too large" in message and "(steps [1, 2]) are intact" in message
    assert "\n" not in message
    assert "3.orbax-checkpoint-tmp" in os.listdir(directory)  # half written
    assert Checkpointer(directory, keep=2, save_every=1, read_only=True).all_steps() == [1, 2]

    state, step = train(rt, workdir, _Batches())  # resumes from step 2, the last good one
    assert step == 5 and int(state.step) == 5
    np.testing.assert_allclose(state.params["w"], initial + 5.0)
    assert sorted(os.listdir(directory)) == ["4", "5"]  # the half-written folder is gone


def test_an_asynchronous_save_that_fails_is_raised_by_close(tmp_path):
    weights = {"w": jax.random.uniform(jax.random.PRNGKey(0), (2**20,))}
    ckpt = Checkpointer(str(tmp_path), keep=2, save_every=1)
    ckpt.save(1, weights)
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), keep=2, save_every=1)
    with _file_size_limit(2**20), pytest.raises(CheckpointWriteError, match="step 2 to"):
        ckpt.save(2, weights)  # returns: the arrays are written in the background
        ckpt.close()
    assert Checkpointer(str(tmp_path), keep=2, save_every=1, read_only=True).all_steps() == [1]


class _EvalSplit:
    """Three eval batches; with `sigterm`, SIGTERM arrives as the second is read."""

    def __init__(self, sigterm: bool = False):
        self.sigterm = sigterm

    def __iter__(self):
        for i in range(3):
            if self.sigterm and i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield {"image": np.ones((8, 3), np.float32), "mask": np.ones(8, bool)}


class _RecordingFID:
    """An FID stand-in that records which of its pass's calls happened."""

    def __init__(self):
        self.calls = []

    def begin(self):
        calls = self.calls

        class Pass:
            def add(self, state, batch):
                calls.append("add")

            def finish(self):
                calls.append("finish")
                return {"fid": 1.0}

        return Pass()


def test_sigterm_during_an_eval_pass_abandons_it_saves_and_the_next_start_resumes(tmp_path):
    workdir = str(tmp_path)
    config = _config(total_steps=4, eval_every=2, checkpoint_every=4, log_every=1)
    rt = build_runtime(_InjectedTask(), config)
    fid = _RecordingFID()
    _, step = train(rt, workdir, _Batches(), lambda: _EvalSplit(sigterm=True), fid)
    assert step == 2 and fid.calls == ["add"]  # one batch in, never finished
    assert sorted(_saved_states(tmp_path / "checkpoints")) == [2]  # saved though not due
    assert not any(k.startswith("eval/") for r in _records(workdir).values() for k in r)

    state, step = train(rt, workdir, _Batches(), _EvalSplit, fid)
    assert step == 4 and int(state.step) == 4
    records = _records(workdir)
    assert [s for s, r in records.items() if "eval/value" in r] == [4]
    assert records[4]["eval/fid"] == 1.0


def test_a_truncated_checkpoint_falls_back_with_one_warning_line(tmp_path, caplog, capfd,
                                                                monkeypatch):
    """Large enough that the other reads are still in flight when the damaged one fails:
    without the quieting, each reports a traceback (~50 here, ~760 for a tiny stage 1)."""
    sharding = jax.sharding.NamedSharding(jax.make_mesh((8,), ("fsdp",)),
                                          jax.sharding.PartitionSpec("fsdp"))
    shapes = {f"a{i}": jax.ShapeDtypeStruct((2**23,), jnp.float32, sharding=sharding)
              for i in range(4)}
    rng = np.random.default_rng(0)
    ckpt = Checkpointer(str(tmp_path), keep=2, save_every=1)
    ckpt.save(1, {k: jax.device_put(np.zeros(a.shape, np.float32), sharding)
                  for k, a in shapes.items()})
    ckpt.save(2, {k: jax.device_put(rng.random(a.shape, np.float32), sharding)
                  for k, a in shapes.items()})
    ckpt.close()
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "2" / "state") for f in fs]
    largest = max(files, key=os.path.getsize)
    os.truncate(largest, os.path.getsize(largest) // 2)

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    capfd.readouterr()
    caplog.clear()
    reader = Checkpointer(str(tmp_path), keep=2, save_every=1, read_only=True)
    restored, step = reader.restore_latest(shapes)
    reader.close()
    assert step == 1 and not np.asarray(restored["a0"]).any()  # step 1 is all zeros
    assert unraisable == []
    damaged = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(damaged) == 1 and "\n" not in damaged[0]
    assert damaged[0].startswith(f"checkpoint: step 2 in {tmp_path} is unreadable (")
    assert damaged[0].endswith("; restored step 1 instead.")
    logged = "\n".join(r.getMessage() for r in caplog.records) + capfd.readouterr().err
    assert "Event loop is closed" not in logged and "Traceback" not in logged
    assert "never retrieved" not in logged


def test_data_settings_that_do_not_exist_are_one_line_errors_naming_them(mini_data_dir):
    cases = {
        ("synthetic_scenes/mini", "train", "valid"):
            "data.name='synthetic_scenes/mini' has no split 'valid'; its splits: test, train,"
            " validation.",
        ("synthetic_scenes/mini", "train[:50%]+extra", "validation"):
            "has no split 'extra' (in 'train[:50%]+extra')",
        ("synthetic_scenes/huge", "train", "validation"):
            "unknown dataset data.name='synthetic_scenes/huge'; available: "
            "synthetic_scenes/res64, synthetic_scenes/res128, synthetic_scenes/mini",
        ("no_such_set", "train", "validation"): "unknown dataset data.name='no_such_set'",
        ("imagenet2012", "train", "validation"):
            f"data.name='imagenet2012' is not prepared in data.data_dir='{mini_data_dir}' "
            "(prepared there: synthetic_scenes/mini)",
    }
    for (name, train_split, eval_split), expected in cases.items():
        data = ml_collections.ConfigDict({"name": name, "data_dir": mini_data_dir,
                                          "train_split": train_split, "eval_split": eval_split})
        with pytest.raises(pipeline.DataConfigError) as error:
            pipeline.prepare(data)
        assert expected in str(error.value) and "\n" not in str(error.value)
    missing = os.path.join(mini_data_dir, "absent")
    data = ml_collections.ConfigDict({"name": "imagenet2012", "data_dir": missing})
    with pytest.raises(pipeline.DataConfigError, match=f"data.data_dir='{missing}' does not"):
        pipeline.prepare(data)


def _cli_error(workdir, *flags) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "vq3d_jax.main", "--config=configs/vit_vqgan.py:tiny",
         f"--workdir={workdir}", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "state: " not in done.stderr  # failed before the model was built, let alone compiled
    return done.stderr.strip().splitlines()[-1]


def test_an_unknown_dataset_fails_before_the_model_is_built(tmp_path, mini_data_dir):
    line = _cli_error(tmp_path, "--config.data.name=no_such_set",
                      f"--config.data.data_dir={mini_data_dir}")
    assert line.startswith("FATAL: unknown dataset data.name='no_such_set'; available: ")
    assert "synthetic_scenes/mini" in line


def test_a_workdir_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    line = _cli_error(tmp_path / "a_file" / "run")
    assert line == (f"FATAL: --workdir='{tmp_path}/a_file/run' is not a writable folder: Not a "
                    f"directory ({tmp_path}/a_file/run).")
