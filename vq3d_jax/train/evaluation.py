"""Evaluating and sampling a state: masked means of a task's per-example metrics and/or
its image metrics (FID/KID/IS, SWD) over a whole split, and sample images. The loop runs
both during training; `main.py`'s eval and sample modes on a restored state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.preemption import PreemptionWatch
from vq3d_jax.train.runtime import Runtime, select
from vq3d_jax.train.task import PerExampleMetrics
from vq3d_jax.train.writer import MetricWriter


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
            batch = sharding_lib.global_batch(select(local, (*task.eval_keys, "mask")), rt.mesh)
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


def write_samples(rt: Runtime, state, local_batch: dict, writer: MetricWriter, step: int):
    sample_fn = rt.compiled("sample", rt.task.sample)
    with rt.scope():
        images = sample_fn(state, sharding_lib.global_batch(local_batch, rt.mesh))
    images = {k: np.asarray(v) for k, v in jax.device_get(images).items()}
    paths = writer.write_images(step, images)
    logging.info("samples at step %d: %s", step, paths)
    return paths
