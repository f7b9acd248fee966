"""The one generic loop: init or restore → iterate → step → log → checkpoint → hooks.

It receives a `Task` (train/task.py) and iterators made by the caller; it knows
nothing about models or datasets. Shardings come from the config's mesh and
logical-axis rules; the train step is compiled once with donated state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics

from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.checkpoint import Checkpointer
from vq3d_jax.train.preemption import PreemptionWatch
from vq3d_jax.train.task import LoadsPretrained, PerExampleMetrics
from vq3d_jax.train.writer import MetricWriter, Progress, format_progress


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf; the state is not saved, earlier checkpoints stay intact."""


@dataclasses.dataclass
class Runtime:
    """The mesh, rules, shardings and compiled functions shared by all modes."""

    task: Any
    config: Any
    mesh: jax.sharding.Mesh
    rules: tuple
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs carrying the current shardings

    _compiled: dict = dataclasses.field(default_factory=dict)

    def compiled(self, name: str, fn: Callable) -> Callable:
        """`fn(state, batch)` jitted once per runtime (replicated outputs), then reused."""
        if name not in self._compiled:
            self._compiled[name] = jax.jit(
                fn,
                in_shardings=(self.state_shardings, sharding_lib.batch_sharding(self.mesh)),
                out_shardings=sharding_lib.replicated(self.mesh),
            )
        return self._compiled[name]

    @contextlib.contextmanager
    def scope(self):
        """Mesh + logical rules: flax's `with_logical_constraint` reads both."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield


def build_runtime(task, config, devices=None) -> Runtime:
    mesh = sharding_lib.create_mesh(config.mesh, devices)
    rules = sharding_lib.rules_from_config(config.sharding.logical_axis_rules)
    divisor = sharding_lib.batch_divisor(mesh)
    if config.global_batch_size % divisor:
        raise ValueError(
            f"global_batch_size={config.global_batch_size} is not divisible by the batch "
            f"axes data×fsdp={divisor} of mesh {dict(mesh.shape)}."
        )
    boxed = jax.eval_shape(task.init_state, jax.random.PRNGKey(config.seed))
    shardings, abstract = abstract_state(boxed, mesh, rules, config.sharding.fallback_min_mb)
    _log_state_size(abstract, mesh)
    return Runtime(task, config, mesh, rules, shardings, abstract)


def abstract_state(boxed, mesh, rules, fallback_min_mb: float):
    """A boxed abstract state (`jax.eval_shape` of an `init_state`, run outside the mesh
    context: inside, the activation constraints would demand concrete shardings of the
    abstract values) → (its shardings, ShapeDtypeStructs carrying them)."""
    shardings = sharding_lib.state_shardings(boxed, mesh, rules, fallback_min_mb)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(boxed),
        shardings,
    )
    return shardings, abstract


def _log_state_size(abstract, mesh) -> None:
    total = sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(abstract))
    per_device = sum(
        math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
        for a in jax.tree.leaves(abstract)
    )
    logging.info(
        "state: %.2f MB total, %.2f MB per device on mesh %s (activations not counted)",
        total / 2**20, per_device / 2**20, dict(mesh.shape),
    )


def init_state(rt: Runtime, *, pretrained: bool = True):
    """A fresh state; with `pretrained`, the task's `Pretrained` runs loaded into it."""
    init = jax.jit(
        lambda rng: nn.meta.unbox(rt.task.init_state(rng)), out_shardings=rt.state_shardings
    )
    with rt.scope():
        state = init(jax.random.PRNGKey(rt.config.seed))
    return load_pretrained(rt, state)[0] if pretrained else state


def load_pretrained(rt: Runtime, state) -> tuple[Any, dict[str, int]]:
    """Restores each `Pretrained` run of the task (train/task.py) into its sub-tree of
    `state`, from that run's newest checkpoint → (state, {name: step restored})."""
    if not isinstance(rt.task, LoadsPretrained):
        return state, {}
    steps = {}
    for spec in rt.task.pretrained():
        directory = os.path.join(spec.workdir, "checkpoints")
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                f"{spec.name}: {spec.workdir!r} has no checkpoints/: train that run there "
                "first."
            )
        boxed = jax.eval_shape(spec.task.init_state, jax.random.PRNGKey(0))
        _, abstract = abstract_state(boxed, rt.mesh, rt.rules,
                                     rt.config.sharding.fallback_min_mb)
        ckpt = Checkpointer(directory, keep=1, save_every=1, read_only=True)
        try:
            restored = ckpt.restore_latest(abstract)
        finally:
            ckpt.close()
        if restored is None:
            raise FileNotFoundError(f"{spec.name}: no checkpoint under {directory}.")
        other, steps[spec.name] = restored
        value = jax.device_put(spec.select(other), _subtree(rt.state_shardings, spec.into))
        state = _with_subtree(state, spec.into, value)
        logging.info("%s: weights of step %d from %s", spec.name, steps[spec.name], directory)
    return state, steps


def _subtree(state, path: tuple[str, ...]):
    node = getattr(state, path[0])
    for key in path[1:]:
        node = node[key]
    return node


def _with_subtree(state, path: tuple[str, ...], value):
    def put(node, keys):
        if not keys:
            return value
        return {**node, keys[0]: put(node[keys[0]], keys[1:])}

    return state.replace(**{path[0]: put(getattr(state, path[0]), path[1:])})


def compile_train_step(rt: Runtime) -> Callable:
    return jax.jit(
        rt.task.train_step,
        in_shardings=(rt.state_shardings, sharding_lib.batch_sharding(rt.mesh)),
        out_shardings=(rt.state_shardings, sharding_lib.replicated(rt.mesh)),
        donate_argnums=(0,),
    )


def _select(batch: dict, keys: Iterable[str]) -> dict:
    return {k: batch[k] for k in keys if k in batch}


def _checked_scalars(metrics: dict, step: int) -> dict[str, float]:
    scalars = {k: float(v) for k, v in metrics.items()}
    bad = [k for k, v in scalars.items() if "loss" in k and not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(
            f"Non-finite {bad} at step {step}: stopping without saving this state. The "
            "last good checkpoint is kept; lower the learning rate or check the data."
        )
    return scalars


def _restore_or_init(rt: Runtime, ckpt: Checkpointer, data_iter) -> tuple[Any, int]:
    restored = ckpt.restore_latest(rt.abstract_state, data_iter)
    if restored is not None:
        return restored
    return init_state(rt), 0


def train(rt: Runtime, workdir: str, train_iter, make_eval_iter: Callable | None = None,
          fid=None):
    """Trains to `config.total_steps`, resuming from `workdir` when it has checkpoints.

    `fid`: optional image metrics (`metrics.evaluator.from_config`) every eval also runs.
    """
    config, task = rt.config, rt.task
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        save_every=config.checkpoint_every,
        async_save=config.get("async_checkpointing", True),
    )
    state, step = _restore_or_init(rt, ckpt, train_iter)
    if step >= config.total_steps:
        logging.info("At step %d ≥ total_steps=%d: nothing to train.", step, config.total_steps)
    else:
        logging.info("Training from step %d to %d.", step, config.total_steps)
    train_step = compile_train_step(rt)
    # A task scored by image metrics alone has nothing to evaluate without them: said once.
    evaluates = make_eval_iter is not None and (isinstance(task, PerExampleMetrics)
                                                or fid is not None)
    if make_eval_iter is not None and not evaluates:
        logging.warning("No evaluation during training: %s is scored by FID/SWD alone and "
                        "both are off (eval.fid.inception_weights, eval.swd.num_images).",
                        type(task).__name__)
    preemption = PreemptionWatch().install()
    progress = Progress(
        total_steps=config.total_steps,
        images_per_step=config.global_batch_size,
        start_step=step,
    )
    accumulated = None
    skipped = 0
    sample_batch = None
    try:
        with rt.scope():
            while step < config.total_steps:
                local = next(train_iter)
                skipped = int(local.get("num_skipped", skipped))
                batch = sharding_lib.global_batch(_select(local, task.train_keys), rt.mesh)
                state, metrics = train_step(state, batch)
                step += 1
                update = _Averages.from_metrics(metrics)
                accumulated = update if accumulated is None else accumulated.merge(update)
                stopping = preemption.should_stop(step)
                final = step == config.total_steps
                if step % config.log_every == 0 or final or stopping:
                    scalars = _checked_scalars(accumulated.compute(), step)
                    accumulated = None
                    perf = progress.report(step)
                    scalars.update(perf)
                    scalars["data/num_skipped"] = skipped
                    writer.write_scalars(step, scalars)
                    logging.info(format_progress(step, config.total_steps, perf, scalars))
                if ckpt.should_save(step) or final or stopping:
                    if accumulated is not None:  # finite check of the unlogged steps
                        _checked_scalars(accumulated.compute(), step)
                    ckpt.save(step, state, train_iter)
                if stopping:
                    logging.warning("Preempted: saved step %d, exiting.", step)
                    break
                if evaluates and (_due(step, config.eval_every) or final):
                    run_eval(rt, state, make_eval_iter(), writer, step, fid)
                if make_eval_iter and (_due(step, config.sample_every) or final):
                    sample_batch = sample_batch or _first_batch(make_eval_iter(), task)
                    write_samples(rt, state, sample_batch, writer, step)
    finally:
        preemption.uninstall()
        ckpt.close()  # waits for async saves: nothing half-written at exit
        writer.close()
    return state, step


def _due(step: int, every: int) -> bool:
    return bool(every) and step % every == 0


class _Averages:
    """Per-key clu `Average` accumulation of the step metrics between log lines."""

    def __init__(self, averages: dict[str, clu_metrics.Average]):
        self.averages = averages

    @classmethod
    def from_metrics(cls, metrics: dict) -> _Averages:
        return cls({k: clu_metrics.Average.from_model_output(v) for k, v in metrics.items()})

    def merge(self, other: _Averages) -> _Averages:
        return _Averages({k: v.merge(other.averages[k]) for k, v in self.averages.items()})

    def compute(self) -> dict:
        return {k: v.compute() for k, v in self.averages.items()}


def _masked_eval_sums(task):
    def sums(state, batch):
        per_example = task.eval_step(state, batch)
        # Padding and non-finite values (e.g. PSNR of a perfect match) are left out
        # of both the sum and the count, so one bad example cannot poison the mean.
        keep = {k: (batch["mask"] > 0) & jnp.isfinite(v) for k, v in per_example.items()}
        totals = {k: jnp.sum(jnp.where(keep[k], v, 0.0)) for k, v in per_example.items()}
        counts = {k: jnp.sum(keep[k].astype(jnp.float32)) for k, v in per_example.items()}
        return totals, counts

    return sums


def run_eval(rt: Runtime, state, eval_batches, writer: MetricWriter, step: int,
             fid=None) -> dict:
    """Masked means of the task's per-example metrics over a whole split.

    `fid`: the image metrics of `metrics.evaluator.from_config` (FID/KID/IS, SWD), or
    None; with them, the same pass also scores the task's `fid_images`. A task without
    per-example metrics (`PerExampleMetrics`) is scored by those alone.
    """
    task = rt.task
    per_example = isinstance(task, PerExampleMetrics)
    if not per_example and fid is None:
        raise ValueError(
            f"{type(task).__name__} is scored by FID/SWD alone (it has no per-example "
            "metrics) and both are off: set --config.eval.fid.inception_weights (README: "
            "FID, KID and LPIPS) or --config.eval.swd.num_images."
        )
    eval_fn = rt.compiled("eval", _masked_eval_sums(task)) if per_example else None
    totals: dict[str, float] = {}
    counts: dict[str, float] = {}
    num_batches = 0
    with rt.scope():
        fid_pass = fid.begin() if fid is not None else None
        for local in eval_batches:
            batch = sharding_lib.global_batch(_select(local, (*task.eval_keys, "mask")), rt.mesh)
            num_batches += 1
            if eval_fn is not None:
                batch_totals, batch_counts = jax.device_get(eval_fn(state, batch))
                for k in batch_totals:
                    totals[k] = totals.get(k, 0.0) + float(batch_totals[k])
                    counts[k] = counts.get(k, 0.0) + float(batch_counts[k])
            if fid_pass is not None:
                fid_pass.add(state, batch)
    if not num_batches:
        raise ValueError("The evaluation split yielded no batches.")
    results = {f"eval/{k}": totals[k] / max(counts[k], 1.0) for k in totals}
    if counts:
        results["eval/num_examples"] = max(counts.values())
    if fid_pass is not None:
        results.update({f"eval/{k}": v for k, v in fid_pass.finish().items()})
    writer.write_scalars(step, results)
    logging.info("eval at step %d: %s", step, {k: round(v, 4) for k, v in results.items()})
    return results


def _first_batch(batches, task) -> dict:
    return _select(next(iter(batches)), task.eval_keys)


def write_samples(rt: Runtime, state, local_batch: dict, writer: MetricWriter, step: int):
    sample_fn = rt.compiled("sample", rt.task.sample)
    with rt.scope():
        images = sample_fn(state, sharding_lib.global_batch(local_batch, rt.mesh))
    images = {k: np.asarray(v) for k, v in jax.device_get(images).items()}
    paths = writer.write_images(step, images)
    logging.info("samples at step %d: %s", step, paths)
    return paths


def write_random_run(task, config, workdir: str, *, scale: float = 0.1, seed: int = 0) -> None:
    """A stand-in run in `workdir`: config.json and a step-0 checkpoint of random params.

    Drawn with numpy in the state's shapes (N(0, scale²) floats, zero integers), so no
    init is compiled (~40 s for VQ3D stage 1 on a CPU): for tests and benchmarks that
    need a run to load, not a good model.
    """
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort())
    abstract = nn.meta.unbox(jax.eval_shape(task.init_state, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def fill(a):
        if np.issubdtype(a.dtype, np.floating):
            return (scale * rng.standard_normal(a.shape)).astype(a.dtype)
        return np.zeros(a.shape, a.dtype)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, save_every=1)
    try:
        ckpt.save(0, jax.tree.map(fill, abstract))
    finally:
        ckpt.close()


def restore_for_inference(rt: Runtime, workdir: str) -> tuple[Any, int]:
    """The latest checkpoint's state; an error when there is none (no random-weight metrics)."""
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=rt.config.keep_checkpoints, save_every=1,
        read_only=True,
    )
    try:
        restored = ckpt.restore_latest(rt.abstract_state)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(
            f"No checkpoint under {os.path.join(workdir, 'checkpoints')}: train first "
            "(--mode=train); metrics of untrained weights are not reported."
        )
    return restored
