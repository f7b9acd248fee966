"""Metric writing (TensorBoard via tensorboardX + metrics.jsonl), samples, progress.

clu's writers import tensorflow, which the GPU image lacks; tensorboardX writes
the same event files without it. Only process 0 writes; others keep a no-op
writer so call sites need no branches.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import numpy as np
from absl import logging

from vq3d_jax.visualize import write_video


def _to_python(value):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard, images to `samples/`."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self.samples_dir = os.path.join(workdir, "samples")
        self._tb = None
        self._jsonl = None
        if enabled:
            os.makedirs(self.samples_dir, exist_ok=True)
            # Appending: a resumed run continues the file, nothing written is lost.
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(logdir=workdir, flush_secs=30)
            except ImportError:
                logging.warning("tensorboardX is not installed: TensorBoard events are off.")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _to_python(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> list[str]:
        """uint8 [H, W, C] → PNG; [T, H, W, C] → GIF (an orbit). Returns the paths."""
        if not self.enabled:
            return []
        from PIL import Image

        paths = []
        for name, image in images.items():
            image = np.asarray(image)
            if image.dtype != np.uint8:
                raise TypeError(f"Image {name!r} must be uint8, got {image.dtype}.")
            base = os.path.join(self.samples_dir, f"{name}_{int(step):08d}")
            if image.ndim == 3:
                path = base + ".png"
                Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path)
                if self._tb is not None:
                    self._tb.add_image(name, image, int(step), dataformats="HWC")
            elif image.ndim == 4:
                path = base + ".gif"
                write_video(path, image, fps=12.5)
                if self._tb is not None:
                    self._tb.add_image(name, image[0], int(step), dataformats="HWC")
            else:
                raise ValueError(f"Image {name!r} has shape {image.shape}; want HWC or THWC.")
            paths.append(path)
        return paths

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """steps/s, images/s and ETA over the last reporting interval."""

    def __init__(self, *, total_steps: int, images_per_step: int, start_step: int):
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = step - self._last_step
        elapsed = max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        steps_per_s = steps / elapsed
        return {
            "perf/steps_per_sec": steps_per_s,
            "perf/images_per_sec": steps_per_s * self.images_per_step,
            "perf/eta_sec": (self.total_steps - step) / steps_per_s if steps else math.inf,
        }


def format_progress(step: int, total: int, perf: Mapping[str, float], scalars) -> str:
    eta = perf["perf/eta_sec"]
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
    shown = " ".join(
        f"{k.split('/')[-1]}={float(v):.4g}" for k, v in scalars.items() if "loss" in k
    )
    return (
        f"step {step}/{total} | {perf['perf/steps_per_sec']:.2f} steps/s | "
        f"{perf['perf/images_per_sec']:.1f} img/s | ETA {eta_text} | {shown}"
    )
