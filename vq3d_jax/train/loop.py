"""The one generic loop: init or restore → iterate → step → log → checkpoint → hooks.

It receives a `Task` (train/task.py) and iterators made by the caller; it knows
nothing about models or datasets. Shardings come from the config's mesh and
logical-axis rules; the train step is compiled once with donated state. An update with
a non-finite loss, gradient norm or state stops the run there, unsaved, or is skipped
and counted (`config.nonfinite`); a SIGTERM, between steps or during an eval pass, ends
in a save and a normal return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics

from vq3d_jax.train import accumulation
from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.checkpoint import Checkpointer
from vq3d_jax.train.preemption import PreemptionWatch
from vq3d_jax.train.task import LoadsPretrained, PerExampleMetrics
from vq3d_jax.train.writer import MetricWriter, Progress, format_progress


class NonFiniteLossError(FloatingPointError):
    """A loss, the gradient norm or the state became NaN/inf (`config.nonfinite='stop'`);
    that state is not saved, earlier checkpoints stay intact."""


# What `config.nonfinite` may be: at a non-finite update, stop the run or skip the update.
NONFINITE_MODES = ("stop", "skip")
# Added to the step's metrics by `compile_train_step`, taken out again by the loop.
_FINITE = "train/update_finite"


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
    check_batch_layout(config, mesh)
    boxed = jax.eval_shape(task.init_state, jax.random.PRNGKey(config.seed))
    shardings, abstract = abstract_state(boxed, mesh, rules, config.sharding.fallback_min_mb)
    _log_state_size(abstract, mesh)
    return Runtime(task, config, mesh, rules, shardings, abstract)


def check_batch_layout(config, mesh) -> int:
    """`config.grad_accum_steps`, once the global batch splits into that many micro-batches
    each spread evenly over the batch axes of `mesh` (a Mesh or an AbstractMesh)."""
    divisor = sharding_lib.batch_divisor(mesh)
    steps = accumulation.steps_of(config)
    if steps < 1:
        raise ValueError(f"grad_accum_steps={steps} must be ≥ 1.")
    if config.global_batch_size % (divisor * steps):
        raise ValueError(
            f"global_batch_size={config.global_batch_size} is not divisible by "
            f"grad_accum_steps={steps} × the batch axes data×fsdp={divisor} of mesh "
            f"{dict(mesh.shape)}."
        )
    return steps


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
    logging.info(
        "state: %.2f MB total, %.2f MB per device on mesh %s (activations not counted)",
        sharding_lib.tree_bytes(abstract, per_device=False) / 2**20,
        sharding_lib.tree_bytes(abstract) / 2**20, dict(mesh.shape),
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
        if spec.merge is not None:
            state = jax.device_put(spec.merge(state, spec.select(other)), rt.state_shardings)
        else:
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
    """The task's step, jitted with the state donated; its metrics gain `_FINITE`: whether
    the losses, the gradient norm and the updated state are all finite. With
    `config.nonfinite='skip'`, a step where they are not returns the state it was given."""
    skip = _nonfinite_mode(rt.config) == "skip"
    return jax.jit(
        _guarded(rt.task.train_step, skip=skip),
        in_shardings=(rt.state_shardings, sharding_lib.batch_sharding(rt.mesh)),
        out_shardings=(rt.state_shardings, sharding_lib.replicated(rt.mesh)),
        donate_argnums=(0,),
    )


def _select(batch: dict, keys: Iterable[str]) -> dict:
    return {k: batch[k] for k in keys if k in batch}


def _nonfinite_mode(config) -> str:
    if config.nonfinite not in NONFINITE_MODES:
        raise ValueError(f"config.nonfinite={config.nonfinite!r}: choose one of "
                         f"{NONFINITE_MODES}.")
    return config.nonfinite


def _checked_metric(name: str) -> bool:
    """The step metrics whose finiteness says whether an update is sound."""
    return "loss" in name or name == "train/grad_norm"


def _guarded(train_step: Callable, *, skip: bool) -> Callable:
    """`train_step` that also says whether its update is finite and, with `skip`, keeps
    the old state when not. The state is checked too, because not every gradient has a
    norm in the metrics (a discriminator's NaN gradient shows only in its new weights)."""

    def step(state, batch):
        new_state, metrics = train_step(state, batch)
        finite = _all_finite(([v for k, v in metrics.items() if _checked_metric(k)],
                              new_state))
        if skip:  # the donated `state` is still readable here; XLA reuses it afterwards
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     new_state, state)
        return new_state, {**metrics, _FINITE: finite}

    return step


def _all_finite(tree) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


class _NonFiniteSteps:
    """The steps whose update was not finite, fetched from the device lazily: the flags
    wait there until the loop next logs, saves, evaluates or samples, so that checking
    them never stalls the dispatch of the next step."""

    def __init__(self, *, skip: bool, skipped: int):
        self.skip = skip
        self.skipped = skipped  # updates skipped since the run began, resumes included
        self._pending: list[tuple[int, jax.Array, dict]] = []

    def add(self, step: int, finite: jax.Array, metrics: dict) -> None:
        self._pending.append((step, finite, metrics))

    def check(self) -> None:
        """'stop': NonFiniteLossError naming the first bad step; 'skip': each bad step
        is counted and logged with what was not finite."""
        pending, self._pending = self._pending, []
        flags = jax.device_get([finite for _, finite, _ in pending])
        for (step, _, metrics), finite in zip(pending, flags, strict=True):
            if finite:
                continue
            what = _nonfinite_names(metrics)
            if not self.skip:
                raise NonFiniteLossError(
                    f"Non-finite {what} at step {step}: stopping without saving this state. "
                    "The last good checkpoint is kept; lower the learning rate, check the "
                    "data, or set --config.nonfinite=skip to skip such updates."
                )
            self.skipped += 1
            logging.warning("Step %d: non-finite %s; update skipped (%d skipped so far).",
                            step, what, self.skipped)


def _nonfinite_names(metrics: dict) -> str:
    values = jax.device_get(metrics)
    bad = [k for k, v in sorted(values.items())
           if _checked_metric(k) and not np.all(np.isfinite(v))]
    return str(bad) if bad else "updated state (losses and gradient norm finite)"


def _restore_or_init(rt: Runtime, ckpt: Checkpointer, data_iter,
                     counters: dict) -> tuple[Any, int]:
    restored = ckpt.restore_latest(rt.abstract_state, data_iter, counters)
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
    counters = {"skipped_steps": 0}  # saved with every checkpoint, restored with it
    state, step = _restore_or_init(rt, ckpt, train_iter, counters)
    if step >= config.total_steps:
        logging.info("At step %d ≥ total_steps=%d: nothing to train.", step, config.total_steps)
    else:
        logging.info("Training from step %d to %d.", step, config.total_steps)
    train_step = compile_train_step(rt)
    nonfinite = _NonFiniteSteps(skip=config.nonfinite == "skip",
                                skipped=counters["skipped_steps"])
    # A task scored by image metrics alone has nothing to evaluate without them: said once.
    evaluates = make_eval_iter is not None and (isinstance(task, PerExampleMetrics)
                                                or fid is not None)
    if make_eval_iter is not None and not evaluates and config.eval_every >= 0:
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
    bad_records = 0
    sample_batch = None

    def save(step, state):
        counters["skipped_steps"] = nonfinite.skipped
        ckpt.save(step, state, train_iter, counters)

    try:
        with rt.scope():
            while step < config.total_steps:
                local = next(train_iter)
                bad_records = int(local.get("num_skipped", bad_records))
                batch = sharding_lib.global_batch(_select(local, task.train_keys), rt.mesh)
                state, metrics = train_step(state, batch)
                step += 1
                finite = metrics.pop(_FINITE)
                nonfinite.add(step, finite, metrics)
                update = _Averages.from_metrics(metrics, mask=finite)
                accumulated = update if accumulated is None else accumulated.merge(update)
                stopping = preemption.should_stop(step)
                final = step == config.total_steps
                log = step % config.log_every == 0 or final or stopping
                saves = ckpt.should_save(step) or final or stopping
                evaluate = evaluates and _due(step, config.eval_every, final)
                sample = bool(make_eval_iter) and _due(step, config.sample_every, final)
                if log or saves or evaluate or sample:
                    nonfinite.check()  # 'stop' raises here: this state is never used
                if log:
                    scalars = {k: float(v) for k, v in accumulated.compute().items()}
                    accumulated = None
                    perf = progress.report(step)
                    scalars.update(perf)
                    scalars["data/num_skipped"] = bad_records
                    if nonfinite.skip:
                        scalars["train/skipped_steps"] = nonfinite.skipped
                    writer.write_scalars(step, scalars)
                    logging.info(format_progress(step, config.total_steps, perf, scalars))
                if saves:
                    save(step, state)
                if stopping:
                    logging.warning("Preempted: saved step %d, exiting.", step)
                    break
                if evaluate and run_eval(rt, state, make_eval_iter(), writer, step, fid,
                                         preemption=preemption) is None:
                    save(step, state)  # a no-op when this step is saved already
                    logging.warning("Preempted during the eval at step %d: saved, exiting.",
                                    step)
                    break
                if sample:
                    sample_batch = sample_batch or _first_batch(make_eval_iter(), task)
                    write_samples(rt, state, sample_batch, writer, step)
    finally:
        preemption.uninstall()
        ckpt.close()  # waits for async saves: nothing half-written at exit
        writer.close()
    return state, step


def _due(step: int, every: int, final: bool) -> bool:
    """Every `every` steps and at the end; 0: at the end only; negative: never."""
    if every < 0:
        return False
    return final or (every > 0 and step % every == 0)


class _Averages:
    """Per-key clu `Average` accumulation of the step metrics between log lines."""

    def __init__(self, averages: dict[str, clu_metrics.Average]):
        self.averages = averages

    @classmethod
    def from_metrics(cls, metrics: dict, mask: jax.Array) -> _Averages:
        """`mask` False: a skipped update, whose (non-finite) metrics are left out."""
        def average(value):
            value = jnp.atleast_1d(value)  # clu's masks need a leading dimension
            return clu_metrics.Average.from_model_output(
                value, mask=jnp.broadcast_to(mask, value.shape))

        return cls({k: average(v) for k, v in metrics.items()})

    def merge(self, other: _Averages) -> _Averages:
        return _Averages({k: v.merge(other.averages[k]) for k, v in self.averages.items()})

    def compute(self) -> dict:
        """The means; none when every update since the last log line was skipped."""
        return {k: v.compute() for k, v in self.averages.items() if v.count > 0}


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
             fid=None, preemption: PreemptionWatch | None = None) -> dict | None:
    """Masked means of the task's per-example metrics over a whole split.

    `fid`: the image metrics of `metrics.evaluator.from_config` (FID/KID/IS, SWD), or
    None; with them, the same pass also scores the task's `fid_images`. A task without
    per-example metrics (`PerExampleMetrics`) is scored by those alone. `preemption`:
    checked between batches; after a SIGTERM the pass is abandoned (nothing written, no
    FID reference cached) and None returned, so that the caller saves and exits in time.
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
            if preemption is not None and preemption.requested:
                logging.warning("SIGTERM during the eval at step %d: pass abandoned after "
                                "%d batches, no metrics written.", step, num_batches)
                return None
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
