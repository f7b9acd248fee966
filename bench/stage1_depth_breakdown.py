r"""Where a trained stage-1 run's depth error lives: AbsRel by range, capped and not.

  python bench/stage1_depth_breakdown.py --workdir=W [--num_scenes=256] [--out=F]

Restores the latest checkpoint of a VQ3D stage-1 run (its own config.json), renders the
canonical view of `--num_scenes` scenes of its eval split and prints one JSON object of
median-scaled AbsRel (per image, then averaged; sky left out) in float64:

* `capped`: the eval's `eval/depth_abs_rel` (scaled predictions capped at the image's
  farthest true depth, `losses.median_scaled_abs_rel`);
* `uncapped`: without the cap (a ray that ends on the far-field backdrop has depth ∞,
  so one such pixel on the ground dominates its image);
* `near_capped` / `far_capped`: capped, over pixels with true depth within / beyond two
  camera distances (objects and the foreground ground / the ground toward the horizon),
  with `near_fraction` of the valid pixels near.

A measurement of a trained run, not a speed; CPU is fine.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from vq3d_jax.datasets import pipeline  # noqa: E402
from vq3d_jax.tasks import get_task  # noqa: E402
from vq3d_jax.tasks.common import (  # noqa: E402
    GENERATOR,
    images_to_float,
    resize_maps,  # noqa: E402
)
from vq3d_jax.tasks.vq3d_stage1 import NERF, fixed_keys  # noqa: E402
from vq3d_jax.train import runtime  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A VQ3D stage-1 run.", required=True)
_NUM_SCENES = flags.DEFINE_integer("num_scenes", 256, "Scenes of the eval split.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON here.")


def image_abs_rels(pred: np.ndarray, true: np.ndarray, near_limit: float) -> dict:
    """One image's AbsRel variants (float64), median scaling over its valid pixels."""
    valid = np.isfinite(true) & (true > 0)
    t, p = true[valid], pred[valid]
    scaled = np.median(t) / np.median(p) * p
    capped = np.minimum(scaled, t.max())
    near = t <= near_limit
    out = {"capped": np.mean(np.abs(capped - t) / t),
           "uncapped": np.mean(np.abs(scaled - t) / t),
           "near_fraction": near.mean()}
    if near.any():
        out["near_capped"] = np.mean(np.abs(capped[near] - t[near]) / t[near])
    if (~near).any():
        out["far_capped"] = np.mean(np.abs(capped[~near] - t[~near]) / t[~near])
    return out


def main(_):
    workdir = _WORKDIR.value
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    task = get_task(config)
    state, step = runtime.restore_for_inference(runtime.build_runtime(task, config), workdir)
    g_params = state.params[GENERATOR]

    @jax.jit
    def disparity(images):
        planes, _ = task.planes(g_params, images)
        cameras = jnp.broadcast_to(task.cam_to_world, (images.shape[0], 4, 4))
        maps = task.render(g_params[NERF], planes, cameras, fixed_keys(planes.shape[0]),
                           randomized=False)
        return resize_maps(maps["disparity"], task.image_size)

    rows = []
    near_limit = 2.0 * config.render.camera_distance
    pipeline.prepare(config.data)
    for batch in pipeline.create_eval_iterator(
            config.data, split=config.data.eval_split, global_batch_size=32,
            num_examples=_NUM_SCENES.value):
        disp = np.asarray(disparity(images_to_float(jnp.asarray(batch["image"]))), np.float64)
        pred = 1.0 / np.maximum(disp, 1e-6)
        true = np.asarray(batch["depth"], np.float64)
        rows += [image_abs_rels(pred[i], true[i], near_limit) for i in range(len(true))]
    result = {"workdir": workdir, "step": int(step), "scenes": len(rows),
              "near_limit": near_limit}
    for key in ("capped", "uncapped", "near_capped", "far_capped", "near_fraction"):
        result[key] = round(float(np.mean([r[key] for r in rows if key in r])), 4)
    print(json.dumps(result))
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
