"""The one generic loop: init or restore → iterate → step → log → checkpoint → hooks.

It receives a `Task` (train/task.py) and iterators made by the caller; it knows
nothing about models or datasets. Shardings come from the config's mesh and
logical-axis rules; the train step is compiled once with donated state. An update with
a non-finite loss, gradient norm or state stops the run there, unsaved, or is skipped
and counted (`config.nonfinite`); a SIGTERM, between steps or during an eval pass, ends
in a save and a normal return.

Building and restoring the state is runtime.py's; the non-finite guard, nonfinite.py's;
the eval pass and samples, evaluation.py's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from clu import metrics as clu_metrics

from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.checkpoint import Checkpointer
from vq3d_jax.train.evaluation import run_eval, write_samples
from vq3d_jax.train.nonfinite import FINITE, NonFiniteSteps
from vq3d_jax.train.preemption import PreemptionWatch
from vq3d_jax.train.runtime import Runtime, compile_train_step, init_state, select
from vq3d_jax.train.task import PerExampleMetrics
from vq3d_jax.train.writer import MetricWriter, Progress, format_progress


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
    nonfinite = NonFiniteSteps(skip=config.nonfinite == "skip",
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
                batch = sharding_lib.global_batch(select(local, task.train_keys), rt.mesh)
                state, metrics = train_step(state, batch)
                step += 1
                finite = metrics.pop(FINITE)
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


def _first_batch(batches, task) -> dict:
    return select(next(iter(batches)), task.eval_keys)
