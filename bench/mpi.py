r"""GMPI multiplane-image throughput: the MPI renderer alone, and generator + render.

  python bench/mpi.py [--what=render,generator] [--resolution=1024] [--planes=32,96] \
      [--batch=1,8] [--config=configs/gmpi.py:ffhq1024] [--repeats=10] [--out=result.json]

`render`: one shared RGB image [S, S, 3] and P alpha planes [P, S, S] (GMPI's MPI) per
sample, rendered from a camera at the pose range's yaw edge (`GMPIHead.render`'s
`geometry.render_mpi` path: broadcast RGB, homography warp, bilinear lookup, over
compositing), frames/s = batch / time. `generator`: z → mapping → synthesis → render at
that camera with the config's generator (default `ffhq1024`: StyleGAN2 base 32768 at
1024², alphas at ≤ 256²), ψ = 1.

Compared with (the issue's figures): ml-gmpi's PyTorch renderer on an H100, ~125 FPS at 32
planes, 1024², batch 1 and ~49 FPS at 96 planes; a plain-XLA gather-and-cumprod render
~296 FPS; GMNR's paper, 17.6 FPS generator + render on a V100. Goals: render ≥ 1,000 FPS
(32 planes, 1024², b1), generator + render ≥ 176 FPS. The roofline printed is the
render's least memory traffic (read RGB + alphas once, write the image, float32) over the
device's HBM bandwidth when given (`--hbm_gbps`). Figures hold only on an accelerator:
on a CPU this is a smoke run (use a small --resolution).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import emit, median_seconds  # noqa: E402
from vq3d_jax.geometry import pose_sampling  # noqa: E402

PEERS_FPS = {
    "ml_gmpi_pytorch_h100_render_32_planes_1024_b1": 125.0,
    "ml_gmpi_pytorch_h100_render_96_planes_1024_b1": 49.0,
    "plain_xla_gather_cumprod_h100_render_32_planes_1024_b1": 296.0,
    "gmnr_paper_v100_generator_render_1024": 17.6,
}
GOALS_FPS = {"render_32_planes_1024_b1": 1000.0, "generator_render": 176.0}


def _load_config(spec: str):
    import importlib

    path, _, preset = spec.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return module.get_config(preset or None)


def _head(config, resolution: int):
    from vq3d_jax.tasks.gan_task import GANTask

    config.model.resolution = config.data.image_size = resolution
    return GANTask(config).head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", default="render,generator")
    parser.add_argument("--config", default="configs/gmpi.py:ffhq1024")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--planes", default="32,96")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--hbm_gbps", type=float, default=0.0,
                        help="device memory bandwidth for the roofline (H200: 4800)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    config = _load_config(args.config)
    head = _head(config, args.resolution)
    s = head.size
    edge = head.poses.truncation * head.poses.yaw_std
    camera = pose_sampling.cameras_at(jnp.asarray([edge, 0.0]), head.poses)
    results = []
    for what in args.what.split(","):
        for planes in (int(p) for p in args.planes.split(",")):
            for batch in (int(b) for b in args.batch.split(",")):
                cams = jnp.broadcast_to(camera, (batch, 1, 4, 4))
                row = {"what": what, "planes": planes, "batch": batch, "resolution": s}
                if what == "render":
                    seconds = _time_render(head, planes, batch, cams, args.repeats)
                    traffic = (3 + planes + 3) * s * s * 4 * batch  # bytes, float32
                    row["min_bytes"] = traffic
                    if args.hbm_gbps:
                        row["roofline_fps"] = batch / (traffic / (args.hbm_gbps * 1e9))
                elif what == "generator":
                    seconds = _time_generator(head, planes, batch, cams, args.repeats)
                else:
                    raise ValueError(f"--what={what!r}: render or generator.")
                row.update(seconds=seconds, fps=batch / seconds)
                print(row, flush=True)
                results.append(row)
    emit({
        "benchmark": "mpi",
        "device": jax.devices()[0].device_kind,
        "config": args.config,
        "results": results,
        "peers_fps": PEERS_FPS,
        "goals_fps": GOALS_FPS,
        "compared_with": "ml-gmpi PyTorch renderer and a plain-XLA render on an H100, "
                         "GMNR's paper on a V100 (issue 13)",
    }, args.out)


def _time_render(head, planes: int, batch: int, cams, repeats: int) -> float:
    """GMPIHead.render's MPI path on a random MPI (the generator's output format)."""
    from vq3d_jax import geometry as geo

    depths, _, extents = head.plane_layout(planes)
    key = jax.random.key(0)
    rgb = jax.random.uniform(key, (batch, head.size, head.size, 3))
    alpha = jax.random.uniform(key, (batch, planes, head.size, head.size, 1))
    reference = head.poses.reference_camera()

    @jax.jit
    def render(rgb, alpha, cams):
        rgba = jnp.concatenate([jnp.broadcast_to(rgb[:, None], alpha.shape[:-1] + (3,)),
                                alpha], -1)
        return jax.vmap(lambda planes, c2w: geo.render_mpi(
            planes, depths, extents, reference, head.intrinsics, c2w[0], head.size,
            head.size)["color"])(rgba, cams)

    return median_seconds(render, rgb, alpha, cams, repeats=repeats)


def _time_generator(head, planes: int, batch: int, cams, repeats: int) -> float:
    params = head.init(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (batch, head.z_dim))

    @jax.jit
    def generate(params, z, cams):
        ws = head.mapping(params, z)
        return head.render(params, ws, cams, jax.random.key(2), num_planes=planes,
                           sample_fraction=1.0)["image"]

    return median_seconds(generate, params, z, cams, repeats=repeats)


if __name__ == "__main__":
    main()
