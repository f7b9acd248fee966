r"""Tri-plane GAN head render throughput (EG3D / Mimic3D): rays/s and direct-render FPS.

  python bench/triplane_render.py [--resolutions=64,128] [--batch=16] [--repeats=10] \
      [--chunk=0] [--skip-direct] [--direct-size=512] [--direct-batch=1] [--out=result.json]

The renderer is `TriplaneHead`'s, the one training uses (`head.field` through
`geometry.render_rays`), called through its public `render_direct`:
- `neural_<s>`: `configs/eg3d.py:ffhq512`'s neural render at s² (64 is the preset's),
  `--batch` samples of random 256² × 32-channel float32 planes, one sampled camera each,
  48 stratified + 48 importance samples, jittered (training). Given coarse planes only,
  `render_direct` is the head's coarse render without the 2D super-resolution, the same
  XLA work as `render`'s (equal cost analysis). Forward: every ray's colour, depth and
  opacity; forward+backward: the gradient of the summed colour w.r.t. the planes and the
  decoder. rays/s = batch · s² / seconds.
- `direct_<s>`: `configs/mimic3d.py:ffhq512_stage2`'s direct render (coarse 256² + detail
  512² planes, no 2D super-resolution) at s² (512 is the preset's), inference (bin
  centres), forward only: frames/s = `--direct-batch` / seconds.
Random planes and decoder: only the decoder is initialised, the 512² generator is not
needed to render given planes. `--chunk` sets `model.triplane.chunk_size` (rays of one
view per `lax.map` chunk; 0: all at once) for every case.

Peer on an H100 (the issue): eg3d's ImportanceRenderer, 3.0 M rays/s forward, 0.87 M
rays/s forward+backward; goal ≥ 5× both. No peer figure for the direct render. Figures
hold only on an accelerator: on a CPU this is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import emit, median_seconds  # noqa: E402
from configs import eg3d, mimic3d  # noqa: E402
from vq3d_jax.geometry import pose_sampling  # noqa: E402
from vq3d_jax.models.eg3d import PLANES, TriplaneGenerator  # noqa: E402
from vq3d_jax.models.triplane_gan import TriplaneHead  # noqa: E402

EG3D_H100_RAYS_PER_S = {"forward": 3.0e6, "forward_backward": 0.87e6}
GOAL_RATIO = 5.0


def _head(config, chunk: int) -> TriplaneHead:
    """The head as `tasks/gan_task.py` builds it, without the task (the stage-2 task
    wants LPIPS weights, which rendering does not)."""
    config.model.triplane.chunk_size = chunk
    cam = config.camera
    poses = pose_sampling.PoseDistribution(
        yaw_std=cam.yaw_std, pitch_std=cam.pitch_std, truncation=cam.truncation,
        radius=cam.radius, center_depth=cam.radius)
    return TriplaneHead(config.model, poses, cam.fov_deg)


def _inputs(head: TriplaneHead, config, batch: int, key: jax.Array, detail: bool):
    """Decoder params, random planes {'coarse'[, 'detail']} and a sampled camera per sample."""
    t = config.model.triplane
    keys = jax.random.split(key, 4)
    params = nn.meta.unbox(head.generator.init(
        keys[3], jnp.zeros((1, t.plane_channels)), method=TriplaneGenerator.decode)["params"])
    r, c = t.plane_resolution, t.plane_channels
    planes = {"coarse": jax.random.normal(keys[0], (batch, PLANES, r, r, c))}
    if detail:
        planes["detail"] = jax.random.normal(keys[1], (batch, PLANES, 2 * r, 2 * r, c))
    cams, _ = pose_sampling.sample_cameras(keys[2], batch, head.poses)
    return params, planes, cams[:, None]


def _shapes(head: TriplaneHead, planes: dict) -> dict:
    o = head.options
    return {"plane_shapes": {k: "x".join(map(str, v.shape)) for k, v in planes.items()},
            "samples_per_ray": f"{o.num_samples}+{o.num_importance}"}


def _time(fn, *args, repeats: int) -> dict:
    """Compile seconds (lower + compile) and the median seconds of a call after warm-up."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    return {"compile_s": compile_s, "seconds": median_seconds(compiled, *args, repeats=repeats)}


def neural_case(size: int, args, key: jax.Array) -> dict:
    config = eg3d.get_config("ffhq512")
    head = _head(config, args.chunk)
    params, planes, cams = _inputs(head, config, args.batch, key, detail=False)

    def forward(params, planes, rng):
        return head.render_direct(params, planes, cams, rng, size=size)

    def loss(params, planes, rng):
        return jnp.sum(forward(params, planes, rng)["image"])

    rays = args.batch * size * size
    row = {"case": f"neural_{size}", "render_size": size, "batch": args.batch, "rays": rays,
           **_shapes(head, planes)}
    for name, fn in (("forward", forward),
                     ("forward_backward", jax.grad(loss, argnums=(0, 1)))):
        timing = _time(fn, params, planes, key, repeats=args.repeats)
        rate = rays / timing["seconds"]
        row[name] = {**timing, "rays_per_s": rate,
                     "ratio_to_eg3d_h100": rate / EG3D_H100_RAYS_PER_S[name],
                     "meets_5x_goal": rate >= GOAL_RATIO * EG3D_H100_RAYS_PER_S[name]}
    return row


def direct_case(args, key: jax.Array) -> dict:
    config = mimic3d.get_config("ffhq512_stage2")
    head = _head(config, args.chunk)
    size = args.direct_size or head.size
    params, planes, cams = _inputs(head, config, args.direct_batch, key, detail=True)

    def forward(params, planes, rng):
        return head.render_direct(params, planes, cams, rng, size=size, randomized=False)

    timing = _time(forward, params, planes, key, repeats=args.repeats)
    rays = args.direct_batch * size * size
    timing.update(fps=args.direct_batch / timing["seconds"], rays_per_s=rays / timing["seconds"])
    return {"case": f"direct_{size}", "render_size": size, "batch": args.direct_batch,
            "rays": rays, **_shapes(head, planes), "forward": timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolutions", default="64,128", help="neural render sizes")
    parser.add_argument("--batch", type=int, default=16, help="samples (one view each) per call")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=0, help="rays per chunk (0: all)")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument("--direct-size", type=int, default=512,
                        help="direct render size (0: the preset's image size, 512)")
    parser.add_argument("--direct-batch", type=int, default=1)
    parser.add_argument("--note", default="", help="free text kept in the JSON")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    key = jax.random.key(0)
    cases = []
    for size in (int(s) for s in args.resolutions.split(",") if s):
        cases.append(neural_case(size, args, key))
        print(cases[-1], flush=True)
    if not args.skip_direct:
        cases.append(direct_case(args, key))
        print(cases[-1], flush=True)
    device = jax.devices()[0]
    result = {
        "benchmark": "triplane_render",
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "chunk": args.chunk,
        "repeats": args.repeats,
        "cases": cases,
        "eg3d_h100_rays_per_s": EG3D_H100_RAYS_PER_S,
        "goal": f">= {GOAL_RATIO:g}x eg3d's ImportanceRenderer, forward and forward+backward",
        "note": args.note,
        "load_average_1_5_15_min_at_end": os.getloadavg(),
    }
    if device.platform == "cpu":
        result["warning"] = ("CPU smoke run: the figures hold only on an accelerator; the "
                             "ratios to eg3d's H100 figures mean nothing here.")
    emit(result, args.out)


if __name__ == "__main__":
    main()
