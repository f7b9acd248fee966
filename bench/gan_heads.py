r"""One table row per trained 3D GAN head (GMPI, GMNR, EG3D, Mimic3D): steps, wall time, the
last eval's SWD and multiview PSNR, and how varied 64 samples are beside 64 real images.

  python bench/gan_heads.py --workdir=eg3d=/tmp/runs27/eg3d [--workdir=NAME=PATH ...] \
      [--data_dir=/tmp/exp/tfds_full] [--out_dir=/tmp/gan_heads] [--out=result.json]

Each run is restored from its latest checkpoint with its own config.json. Its samples are
exactly `task.fid_images` for eval indices 0..63 (ψ = 1, a pose drawn from the training
distribution each); its reals are the first 64 images of its `data.eval_split`. Writes
`<out_dir>/<NAME>_samples.png` (8×8) per run and one `reals_<data>_<split>.png` per dataset.
A measurement of trained runs, not a speed: CPU is fine.
"""

import glob
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

from bench.common import emit  # noqa: E402
from vq3d_jax.datasets import pipeline  # noqa: E402
from vq3d_jax.render_mode import load_split  # noqa: E402
from vq3d_jax.tasks import get_task  # noqa: E402
from vq3d_jax.tasks.common import image_grid, run_config  # noqa: E402
from vq3d_jax.train import runtime  # noqa: E402
from vq3d_jax.train import sharding as sharding_lib  # noqa: E402

_WORKDIRS = flags.DEFINE_multi_string("workdir", [], "NAME=PATH of a finished GAN run.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Overrides every run's config.data.data_dir.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/gan_heads", "Where the contact sheets go.")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON here.")

NUM = 64  # images per set: an 8×8 contact sheet
EVAL_KEYS = ("eval/swd_avg", "eval/swd_16", "eval/swd_32", "eval/multiview_psnr")


def records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scalar_wall_times(path: str) -> list[float]:
    """Wall times of the scalar events of one TensorBoard file, the records metrics.jsonl
    also has (TFRecord framing: length u64, its CRC u32, the Event proto, its CRC u32)."""
    times = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            event = event_pb2.Event.FromString(f.read(length))
            f.read(4)
            if any(v.WhichOneof("value") == "simple_value" for v in event.summary.value):
                times.append(event.wall_time)
    return times


def wall_seconds(workdir: str) -> float | None:
    """metrics.jsonl has no clock: the TensorBoard events', first to last scalar record of
    each event file (one per writer session, so a resumed run's pause is left out), summed."""
    spans = [t[-1] - t[0] for p in sorted(glob.glob(os.path.join(workdir, "events.out.*")))
             if (t := scalar_wall_times(p))]
    return round(sum(spans), 1) if spans else None


def diversity(images: np.ndarray) -> dict:
    """RMS pixel distances in [0, 1] between the images: mean over pairs, mean nearest other.
    Blind to a collapse onto one arrangement in many tints (their noise and colour keep the
    distances up): read it beside the contact sheets."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    sq = (x * x).sum(1)
    # |a − b|² = |a|² + |b|² − 2a·b, per pixel channel; rounding can dip below 0 on the diagonal.
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2.0 * x @ x.T, 0.0) / x.shape[1])
    np.fill_diagonal(d, np.inf)
    return {"mean_pairwise": float(d[np.triu_indices(len(x), 1)].mean()),
            "mean_nearest": float(d.min(1).mean())}


def write_sheet(images: np.ndarray, path: str) -> str:
    side = int(np.sqrt(len(images)))
    rows = list(images.reshape((side, side) + images.shape[1:]))
    Image.fromarray(np.asarray(image_grid(rows))).save(path)
    return path


def measure(name: str, workdir: str, reals_cache: dict) -> dict:
    config = run_config(workdir, "--workdir", "a GAN run (python -m vq3d_jax.main "
                        "--config=configs/eg3d.py ...)")
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    data, split = config.data, config.data.eval_split
    task = get_task(config)
    rt = runtime.build_runtime(task, config, jax.devices()[:1])
    state, step = runtime.restore_for_inference(rt, workdir)
    with rt.scope():
        index = sharding_lib.global_batch({"index": np.arange(NUM, dtype=np.int32)}, rt.mesh)
        samples = np.asarray(rt.compiled("fid_images", task.fid_images)(state, index))

    key = (data.name, data.data_dir, split, int(data.image_size))
    if key not in reals_cache:  # the runs of one table share their data: read it once
        pipeline.prepare(data, splits=[split])
        _, reals = load_split(data, split, NUM, global_batch_size=config.eval.global_batch_size)
        sheet = f"reals_{data.name.replace('/', '_')}_{split}.png"
        reals_cache[key] = (reals, write_sheet(reals, os.path.join(_OUT_DIR.value, sheet)),
                            diversity(reals))
    reals, reals_sheet, real_div = reals_cache[key]
    if samples.shape != reals.shape:
        raise ValueError(f"{name}: samples {samples.shape} but reals {reals.shape}.")

    evals = [r for r in records(workdir) if any(k.startswith("eval/") for k in r)]
    last_eval = evals[-1] if evals else {}
    sample_div = diversity(samples)
    return {
        "name": name, "workdir": workdir, "steps": int(step), "wall_s": wall_seconds(workdir),
        "eval_step": last_eval.get("step"), **{k: last_eval.get(k) for k in EVAL_KEYS},
        "samples": sample_div, "reals": real_div,
        "ratio": {k: sample_div[k] / real_div[k] for k in sample_div},
        "samples_png": write_sheet(samples, os.path.join(_OUT_DIR.value, f"{name}_samples.png")),
        "reals_png": reals_sheet,
    }


def main(argv):
    del argv
    if not _WORKDIRS.value:
        raise app.UsageError("Give at least one --workdir=NAME=PATH.")
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    specs = [spec.split("=", 1) for spec in _WORKDIRS.value]
    if any(len(s) != 2 for s in specs):
        raise app.UsageError("--workdir takes NAME=PATH.")
    reals_cache = {}
    rows = [measure(name, path, reals_cache) for name, path in specs]
    emit({
        "command": " ".join(["python"] + sys.argv),
        "rows": rows,
        "units": {"wall_s": "seconds", "swd": "eval/swd_* as the run logged them",
                  "eval/multiview_psnr": "dB", "distances": "RMS pixel difference, [0, 1]"},
        "definitions": {
            "steps": "step of the latest checkpoint",
            "wall_s": "TensorBoard event wall times, first to last scalar record of each event "
                      "file, summed (metrics.jsonl has no clock); the steps before the first "
                      "log (start-up, compile) are not counted; null without event files",
            "eval/*": "the last metrics.jsonl record with eval/ keys (its step: eval_step)",
            "samples": f"task.fid_images for eval indices 0..{NUM - 1}: ψ = 1, each at a pose "
                       "drawn from the training pose distribution",
            "reals": f"the first {NUM} images of the run's config.data.eval_split",
            "distance": "sqrt(mean over the image_size² × 3 RGB values of (a − b)²), pixels "
                        "in [0, 1]",
            "mean_pairwise": f"mean distance over the {NUM}·{NUM - 1}/2 pairs",
            "mean_nearest": "mean over images of the distance to the nearest other image "
                            "(≈ 0: collapse)",
            "ratio": "samples / reals (1 = as diverse as the data; ≪ 1 = collapse)",
        },
    }, _OUT.value)


if __name__ == "__main__":
    app.run(main)
