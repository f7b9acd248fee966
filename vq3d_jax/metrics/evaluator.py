"""FID / KID over an eval split: Inception features under jit, streamed into float64 statistics.

One `FIDEvaluator` per run. `begin()` opens a pass; for each eval batch the pass
takes the task's images (`task.fid_images(state, batch)`: reconstructions for
stage 1, samples for generators) and, unless the reference statistics are
already known, the split's real images; `finish()` returns the scores.

- Features: the FID InceptionV3 (`models/inception.py`), jitted with the batch
  sharded over the mesh's data axes and the features replicated, so every
  process accumulates the same float64 statistics (`metrics/fid.py`); padding
  rows are masked out.
- Reference: a user `.npz` (`mu`, `sigma`, optionally raw `features` /
  `activations` for KID), or the split's own statistics, computed during the
  first pass and cached as `.npz` keyed by dataset, split, resolution, example
  count and a hash of the preprocessing and the Inception weights.
- The protocol (network, resize, sample count, reference) is logged with every
  score.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
from absl import logging

from vq3d_jax.metrics import fid as fid_lib
from vq3d_jax.metrics import swd as swd_lib
from vq3d_jax.models import inception, pretrained
from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.task import ScoredByFID

WEIGHTS_KEY = "eval.fid.inception_weights"
_RESIZE = "bilinear to 299² without antialias (half-pixel centres), then [−1, 1]"


def load_reference(path: str) -> dict:
    """A user reference `.npz` → {'mu', 'sigma', 'features' (or None)} in float64."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"FID reference {path!r} (eval.fid.reference) does not exist.")
    with np.load(path) as data:
        keys = set(data.files)
        raw = next((data[k] for k in ("features", "activations") if k in keys), None)
        if {"mu", "sigma"} <= keys:
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        elif raw is not None:
            stats = fid_lib.StreamingStats(raw.shape[1])
            stats.update(raw)
            mu, sigma = stats.mean_cov()
        else:
            raise ValueError(
                f"FID reference {path} has keys {sorted(keys)}: it needs 'mu' and 'sigma' "
                "(as the ADM reference batches have) or raw 'features'/'activations' [N, 2048]."
            )
    dim = inception.POOL_FEATURES
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"FID reference {path}: mu {mu.shape}, sigma {sigma.shape}; "
                         "expected the 2048-d pool_3 statistics.")
    return {"mu": mu, "sigma": sigma, "features": raw}


def from_config(config, runtime, num_examples: int):
    """The run's image metrics for the eval pass: FID/KID/IS when Inception weights are
    configured (said once when not), SWD when `eval.swd.num_images` > 0; None without
    either, or for a task with no images to score (`ScoredByFID`).

    A configured but missing or foreign weights file is an error: a reported FID
    never comes from random weights.
    """
    metrics = []
    if not config.eval.fid.inception_weights:
        logging.warning(
            "FID/KID are off: %s",
            inception.SPEC.missing_message(WEIGHTS_KEY, config.eval.fid.inception_weights),
        )
    swd_images = int(config.eval.get("swd", {}).get("num_images", 0))
    if not (config.eval.fid.inception_weights or swd_images):
        return None
    if not isinstance(runtime.task, ScoredByFID):
        logging.info("FID/KID/SWD are off: %s has no images to score.",
                     type(runtime.task).__name__)
        return None
    if config.eval.fid.inception_weights:
        metrics.append(FIDEvaluator(config.eval.fid, config.data, num_examples, runtime.mesh,
                                    runtime.state_shardings, runtime.task))
    if swd_images:
        metrics.append(swd_lib.SWDEvaluator(runtime.task, swd_images, runtime.state_shardings,
                                            runtime.mesh))
    return metrics[0] if len(metrics) == 1 else ImageMetrics(metrics)


class ImageMetrics:
    """Several eval-pass image metrics run as one (`begin` → `add` → `finish`), the task's
    images of each batch drawn once for all of them."""

    def __init__(self, metrics: list):
        self.metrics = metrics

    def begin(self):
        passes = [m.begin() for m in self.metrics]
        task_images = self.metrics[0].task_images  # computed once, read by every metric

        class Pass:
            def add(self, state, batch):
                images = task_images(state, batch)
                for p in passes:
                    p.add_images(images, batch)

            def finish(self):
                return {k: v for p in passes for k, v in p.finish().items()}

        return Pass()


class FIDEvaluator:
    """Scores a task's images on an eval split against the split's Inception statistics."""

    def __init__(self, fid_config, data_config, num_examples: int, mesh, state_shardings,
                 task):
        self.config = fid_config
        path = fid_config.inception_weights
        self.params = jax.device_put(
            inception.load_params(path, WEIGHTS_KEY), sharding_lib.replicated(mesh)
        )
        self.weights_sha = pretrained.read_meta(path).get("source_sha256", "")
        self.network = inception.InceptionV3FID()
        self.dataset = f"{data_config.name}/{data_config.eval_split}"
        self.image_size = int(data_config.image_size)
        self.num_examples = num_examples
        # What the protocol line calls the scored images (stage 1: reconstructions).
        self.scored = task.fid_images_are
        batch, replicated = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)

        def features(params, images, mask):
            out = self.network.apply({"params": params}, images)
            return out["pool"], out["logits"], mask

        # One Inception compile serves real and task images alike: both arrive
        # batch-sharded; the features come back replicated to every process.
        self._features = jax.jit(
            features, in_shardings=(replicated, batch, batch), out_shardings=replicated
        )
        self.task_images = jax.jit(
            task.fid_images, in_shardings=(state_shardings, batch), out_shardings=batch
        )
        self._reference = None
        if fid_config.reference:
            self._reference = load_reference(fid_config.reference)
            self.reference_source = fid_config.reference
        else:
            self.reference_source = self.cache_path()
            if os.path.exists(self.reference_source):
                self._reference = load_reference(self.reference_source)

    # -- the reference --------------------------------------------------------------------
    def preprocessing_hash(self) -> str:
        record = json.dumps([self.dataset, self.image_size, _RESIZE, self.weights_sha])
        return hashlib.sha256(record.encode()).hexdigest()[:12]

    def cache_path(self) -> str:
        cache_dir = self.config.cache_dir or os.path.join(
            os.path.expanduser("~"), ".cache", "vq3d_jax", "fid_reference")
        name = (f"{self.dataset.replace('/', '_')}_{self.image_size}px_"
                f"n{self.num_examples}_{self.preprocessing_hash()}.npz")
        return os.path.join(cache_dir, name)

    def protocol(self, n_generated: int, what: str) -> str:
        return (
            f"FID protocol: InceptionV3 pool_3 (2048-d; pytorch-fid 2015-12-05 weights, "
            f"source sha256 {self.weights_sha[:12]}), {_RESIZE}; {n_generated} {what} of "
            f"{self.dataset} at {self.image_size}² against {self.reference_source}; "
            f"KID: {self.config.kid_subsets} subsets of ≤ {self.config.kid_subset_size}, "
            f"cubic kernel."
        )

    # -- one pass -------------------------------------------------------------------------
    def begin(self) -> _Pass:
        return _Pass(self)

    def _save_reference(self, stats: fid_lib.StreamingStats) -> None:
        mu, sigma = stats.mean_cov()
        if stats.n != self.num_examples:
            logging.warning("FID reference: %d real images, %d expected; not cached.",
                            stats.n, self.num_examples)
            return
        path = self.cache_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, features=stats.features())
        os.replace(tmp, path)
        logging.info("FID reference statistics cached: %s", path)
        self._reference = {"mu": mu, "sigma": sigma, "features": stats.features()}


class _Pass:
    def __init__(self, evaluator: FIDEvaluator):
        self.ev = evaluator
        self.keep = int(evaluator.config.kid_max_features)
        dim = inception.POOL_FEATURES
        self.generated = fid_lib.StreamingStats(dim, keep=self.keep)
        self.real = None if evaluator._reference is not None else fid_lib.StreamingStats(
            dim, keep=self.keep)
        self.logits: list[np.ndarray] = []  # the first `keep` generated rows, for IS
        self.num_logits = 0

    def add(self, state, global_batch: dict) -> None:
        """Accumulates one eval batch (global arrays with 'image' and 'mask')."""
        self.add_images(self.ev.task_images(state, global_batch), global_batch)

    def add_images(self, images, global_batch: dict) -> None:
        """`add` with the task's images of the batch already computed."""
        ev = self.ev
        pool, logits, mask = jax.device_get(
            ev._features(ev.params, images, global_batch["mask"]))
        self.generated.update(np.asarray(pool), np.asarray(mask))
        if self.num_logits < self.keep:
            rows = np.asarray(logits)[np.asarray(mask, bool)][: self.keep - self.num_logits]
            self.logits.append(rows)
            self.num_logits += len(rows)
        if self.real is not None:
            pool, _, mask = jax.device_get(
                ev._features(ev.params, global_batch["image"], global_batch["mask"]))
            self.real.update(np.asarray(pool), np.asarray(mask))

    def finish(self) -> dict[str, float]:
        ev = self.ev
        if self.real is not None and jax.process_index() == 0:
            ev._save_reference(self.real)
        if self.real is not None and ev._reference is None:  # other processes, or not cached
            mu, sigma = self.real.mean_cov()
            ev._reference = {"mu": mu, "sigma": sigma, "features": self.real.features()}
        ref = ev._reference
        mu, sigma = self.generated.mean_cov()
        scores = {"fid": fid_lib.frechet_distance(mu, sigma, ref["mu"], ref["sigma"])}
        if ref["features"] is not None and len(ref["features"]) >= 2:
            scores["kid"], scores["kid_std"] = fid_lib.kernel_inception_distance(
                self.generated.features(), ref["features"],
                num_subsets=int(ev.config.kid_subsets),
                subset_size=int(ev.config.kid_subset_size),
            )
        if self.num_logits >= 10:
            scores["inception_score"], scores["inception_score_std"] = (
                fid_lib.inception_score(np.concatenate(self.logits), splits=10))
        scores["fid_num_examples"] = float(self.generated.n)
        logging.info("%s", ev.protocol(self.generated.n, ev.scored))
        return scores
