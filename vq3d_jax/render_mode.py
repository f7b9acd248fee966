"""`--mode=render`: one image in, a 3D scene out, for each image of a folder or TFDS split
(`render`); for a generator, one seed in, a sample seen along an orbit out (`render_seeds`).

Per image it writes `<name>_reconstruction.png`, `<name>_depth.png` (colour-mapped
disparity, near = bright), `<name>_orbit.gif` (or .mp4) and, with a mesh level,
`<name>.ply`: marching cubes on the density sampled over the uncontracted cube
|x| ≤ 1/scene_scale (the part of the scene the tri-planes resolve finely). Per seed:
`seed_<n>_image.png`, `seed_<n>_depth.png` and `seed_<n>_orbit.gif` (or .mp4), the
orbit's depth beside each frame, and with a mesh level `seed_<n>.ply` over the box of
the generator's density field (the tri-plane heads; the multiplane head has none).
A mesh whose grid never reaches the level is skipped with a warning naming its input.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from vq3d_jax import visualize
from vq3d_jax.datasets import pipeline, preprocess
from vq3d_jax.train import runtime
from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.task import (
    CapabilityError,
    HasDensity,
    MeshesSamples,
    RendersSamples,
    RendersScenes,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class MeshOptions:
    resolution: int = 64
    level: float = 10.0  # σ per world unit: σ·δ ≈ 1 over a 0.1-unit step is opaque


def load_folder(folder: str, image_size: int) -> tuple[list[str], np.ndarray, int]:
    """PNG/JPEG files → (names, uint8 [N, S, S, 3] centre crops, number skipped)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images={folder!r} is not a folder of PNG/JPEG files.")
    names, images, skipped = [], [], 0
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(os.path.join(folder, entry)) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as err:
            logging.warning("Skipping %s: %s", entry, err)
            skipped += 1
            continue
        geometry = preprocess.resize_geometry(rgb.shape[0], rgb.shape[1], image_size)
        images.append(preprocess.resize_crop(rgb, geometry, image_size, Image.BICUBIC))
        names.append(stem)
    if not images:
        raise ValueError(f"No readable PNG/JPEG image in {folder!r} ({skipped} skipped).")
    return names, np.stack(images), skipped


def load_split(
    data, split: str, count: int, *, global_batch_size: int
) -> tuple[list[str], np.ndarray]:
    """The first `count` images of split `split` of the data config `data`, named
    `<split>_<index>`, read in eval batches of `global_batch_size`."""
    batches = pipeline.create_eval_iterator(
        data, split=split, global_batch_size=global_batch_size, num_examples=count
    )
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    return [f"{split}_{i:05d}" for i in range(len(images))], images


def _batches(images: np.ndarray, batch_size: int):
    """Fixed-size batches (the last padded by repeating images) and their real counts."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - len(chunk)
        yield np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]), len(chunk)


def _single_process() -> None:
    if jax.process_count() > 1:
        # Every output is read and written by one host; a few pictures need no pod.
        raise ValueError("--mode=render runs in one process; launch it without --distributed.")


def _write_views(base: str, image, depth, orbit, video_ext: str, first: str) -> list[str]:
    """`<base>_<first>.png`, `<base>_depth.png`, `<base>_orbit<video_ext>` → their paths."""
    paths = [f"{base}_{first}.png", base + "_depth.png", base + "_orbit" + video_ext]
    Image.fromarray(image).save(paths[0])
    Image.fromarray(depth).save(paths[1])
    visualize.write_video(paths[2], orbit)
    return paths


def render(rt: runtime.Runtime, state, names, images, out_dir: str, *, video_ext: str = ".gif",
           mesh: MeshOptions | None = None) -> list[str]:
    task = rt.task
    if not isinstance(task, RendersScenes):
        raise CapabilityError(f"--mode=render: {type(task).__name__} renders no scenes (VQ3D "
                              "stage 1 does, with model.decoder='nerf').")
    if mesh is not None and not isinstance(task, HasDensity):
        raise CapabilityError(f"--mesh: {type(task).__name__} has no density field to mesh.")
    _single_process()
    os.makedirs(out_dir, exist_ok=True)
    views = rt.compiled("render", task.render_outputs)
    if mesh is not None:
        density = rt.compiled("density", task.density)
        half = 1.0 / rt.config.render.scene_scale
        bounds = (np.full(3, -half), np.full(3, half))
        points = visualize.grid_points(bounds, mesh.resolution).reshape(-1, 3)
    batch_size = rt.config.eval.global_batch_size
    written, index, meshes_skipped = [], 0, 0
    with rt.scope():
        for batch, count in _batches(images, batch_size):
            outputs = jax.device_get(views(state, sharding_lib.global_batch({"image": batch},
                                                                           rt.mesh)))
            fields = None
            if mesh is not None:
                grid = np.broadcast_to(points, (len(batch),) + points.shape)
                fields = jax.device_get(density(state, sharding_lib.global_batch(
                    {"image": batch, "points": grid}, rt.mesh)))
            for i in range(count):
                base = os.path.join(out_dir, names[index])
                written += _write_views(base, outputs["reconstruction"][i],
                                        outputs["depth"][i], outputs["orbit"][i], video_ext,
                                        "reconstruction")
                if fields is not None:
                    meshes = _mesh_or_skip(base + ".ply", fields, i, bounds, mesh, names[index])
                    written += meshes
                    meshes_skipped += not meshes
                index += 1
            logging.info("rendered %d/%d images into %s", index, len(images), out_dir)
    _warn_skipped(meshes_skipped, index)
    return written


def render_seeds(rt: runtime.Runtime, state, seeds, out_dir: str, *, video_ext: str = ".gif",
                 mesh: MeshOptions | None = None) -> list[str]:
    """A generator's samples of `seeds` (its `sample.seed` stream, as `--mode=sample`)."""
    task = rt.task
    if not isinstance(task, RendersSamples):
        raise CapabilityError(f"--mode=render --seeds: {type(task).__name__} is not a "
                              "generator of scenes (the GAN heads are).")
    if mesh is not None:
        if not isinstance(task, MeshesSamples):
            raise CapabilityError(f"--mesh: {type(task).__name__} has no density field to "
                                  "mesh.")
        bounds = task.sample_mesh_bounds()  # a head without a field declines here
    _single_process()
    os.makedirs(out_dir, exist_ok=True)
    views = rt.compiled("render_samples", task.render_samples)
    if mesh is not None:
        density = rt.compiled("sample_density", task.sample_density)
        points = visualize.grid_points(bounds, mesh.resolution).reshape(-1, 3)
    seeds = np.asarray(seeds, np.int32)
    written, done, meshes_skipped = [], 0, 0
    with rt.scope():
        for batch, count in _batches(seeds, rt.config.eval.global_batch_size):
            outputs = jax.device_get(views(state, sharding_lib.global_batch({"index": batch},
                                                                           rt.mesh)))
            fields = None
            if mesh is not None:
                grid = np.broadcast_to(points, (len(batch),) + points.shape)
                fields = jax.device_get(density(state, sharding_lib.global_batch(
                    {"index": batch, "points": grid}, rt.mesh)))
            for i in range(count):
                name = f"seed_{int(batch[i]):04d}"
                base = os.path.join(out_dir, name)
                written += _write_views(base, outputs["image"][i], outputs["depth"][i],
                                        outputs["orbit"][i], video_ext, "image")
                if fields is not None:
                    meshes = _mesh_or_skip(base + ".ply", fields, i, bounds, mesh, name)
                    written += meshes
                    meshes_skipped += not meshes
            done += count
            logging.info("rendered %d/%d seeds into %s", done, len(seeds), out_dir)
    _warn_skipped(meshes_skipped, done)
    return written


def _mesh_or_skip(path: str, fields, i: int, bounds, mesh: MeshOptions,
                  name: str) -> list[str]:
    """[`path`] once its mesh is written; [] with a warning naming `name` when the grid
    never reaches the level (a skip, not an error: one sample may be empty)."""
    try:
        return [_write_mesh(path, fields, i, bounds, mesh)]
    except visualize.NoSurfaceError as err:
        logging.warning("No mesh for %s: %s", name, err)
        return []


def _warn_skipped(skipped: int, total: int) -> None:
    if skipped:
        logging.warning("%d of %d meshes skipped (see --mesh_level).", skipped, total)


def _write_mesh(path: str, fields, i: int, bounds, mesh: MeshOptions) -> str:
    n = mesh.resolution
    sigma = np.asarray(fields["density"][i], np.float32).reshape(n, n, n)
    vertices, faces = visualize.extract_mesh(sigma, bounds, mesh.level)
    # Vertex colour: the field's colour at the nearest grid point.
    lo, hi = bounds
    nearest = np.clip(np.round((vertices - lo) / (hi - lo) * (n - 1)), 0, n - 1).astype(int)
    colors = np.asarray(fields["color"][i]).reshape(n, n, n, -1)[tuple(nearest.T)][:, :3]
    visualize.write_ply(path, vertices, faces, np.clip(colors, 0.0, 1.0))
    return path
