"""TFDS builder for the synthetic 3D scenes (ground-truth depth, cameras, novel views).

Importing this module registers ``synthetic_scenes`` with TFDS, so afterwards
``tfds.data_source('synthetic_scenes/res64', data_dir=...)`` works. Data are written in
the array_record format and need no tensorflow (images are yielded as PNG bytes, which
``tfds.features.Image`` stores as they are). Scenes come from
:mod:`vq3d_jax.datasets.raycast`; the conventions (OpenCV camera frame, world up = -y,
z-depth with +inf for the sky) are documented in :mod:`vq3d_jax.datasets.cameras_np`.

Configs: ``res64`` (64², 2048/256/256 train/validation/test scenes), ``res128`` (128²,
8192/512/512) and ``mini`` (32², 128/32/32; for tests). Scene ``i`` of a split is the same
scene (same geometry and cameras) in every config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import os

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging
from etils import epath
from PIL import Image

from vq3d_jax.datasets import raycast, scenes

NAME = "synthetic_scenes"


@dataclasses.dataclass
class SyntheticScenesConfig(tfds.core.BuilderConfig):
    """Resolution and split sizes of one variant."""

    resolution: int = 64
    num_train: int = 2048
    num_validation: int = 256
    num_test: int = 256
    seed: int = 0  # folded with (split, index) into each scene's own generator


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) → PNG bytes (what tfds.features.Image accepts without tensorflow)."""
    buf = io.BytesIO()
    # Level 3 is the fastest of PIL's levels here and within a few % of level 6's size.
    Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def to_tfds_example(example: dict, index: int) -> dict:
    """A :func:`raycast.generate_example` dict in the builder's feature layout."""
    nv = example["novel_views"]
    return {
        "id": index,
        "image": encode_png(example["image"]),
        "depth": example["depth"],
        "intrinsics": example["intrinsics"],
        "cam_to_world": example["cam_to_world"],
        "scene_center": example["scene_center"],
        "label": example["label"],
        "novel_views": {
            "image": [encode_png(im) for im in nv["image"]],
            "depth": nv["depth"],
            "intrinsics": nv["intrinsics"],
            "cam_to_world": nv["cam_to_world"],
            "yaw_pitch": nv["yaw_pitch"],
        },
    }


def features(resolution: int) -> tfds.features.FeaturesDict:
    """The builder's feature layout at ``resolution``² (see :class:`SyntheticScenes`)."""
    f = tfds.features
    image = lambda: f.Image(shape=(resolution, resolution, 3), encoding_format="png")
    # zlib shrinks the float32 depth maps ~7x (flat sky rows, smooth ground) and, unlike
    # the image codecs, decodes without tensorflow.
    depth = lambda: f.Tensor(shape=(resolution, resolution), dtype=np.float32, encoding="zlib")
    matrix = lambda n: f.Tensor(shape=(n, n), dtype=np.float32)
    return f.FeaturesDict(
        {
            "id": f.Scalar(dtype=np.int64, doc="Scene index within its split."),
            "image": image(),
            "depth": depth(),
            "intrinsics": matrix(3),
            "cam_to_world": matrix(4),
            "scene_center": f.Tensor(shape=(3,), dtype=np.float32),
            "label": f.ClassLabel(names=scenes.CLASS_NAMES),
            "novel_views": f.Sequence(
                {
                    "image": image(),
                    "depth": depth(),
                    "intrinsics": matrix(3),
                    "cam_to_world": matrix(4),
                    "yaw_pitch": f.Tensor(shape=(2,), dtype=np.float32),
                },
                length=scenes.NUM_NOVEL_VIEWS,
            ),
        }
    )


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
    """Procedural primitives on a ground plane under a sky at infinity.

    Each example: the canonical view (``image``, z-``depth`` with +inf for the sky,
    ``intrinsics``, OpenCV ``cam_to_world``), the scene pivot ``scene_center``, the class
    ``label`` of the primitive covering most canonical pixels, and ``novel_views``: the
    canonical camera orbited about ``scene_center`` by the fixed ``yaw_pitch`` offsets of
    ``scenes.NOVEL_VIEW_OFFSETS_DEG`` (radians), each with image, depth and camera.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticScenesConfig(
            name="res64",
            description="64x64",
            resolution=64,
            num_train=2048,
            num_validation=256,
            num_test=256,
        ),
        SyntheticScenesConfig(
            name="res128",
            description="128x128",
            resolution=128,
            num_train=8192,
            num_validation=512,
            num_test=512,
        ),
        SyntheticScenesConfig(
            name="mini",
            description="32x32, for tests",
            resolution=32,
            num_train=128,
            num_validation=32,
            num_test=32,
        ),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's lookup of a packaged builder's file imports `importlib_resources`, which
        # TFDS does not declare and which is absent here; the answer is simply this file.
        return epath.Path(__file__)

    def __init__(self, *, file_format=None, **kwargs):
        # array_record: random access for grain, and writable without tensorflow.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: dataset_info_from_configs needs files a single-module builder
        # does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=features(self.builder_config.resolution),
            supervised_keys=("image", "label"),
            # Keep generation order on disk, so record i of a split is scene i.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        bar = tqdm.tqdm(
            range(num_examples), desc=f"{NAME}/{cfg.name} {split}", unit="scene", leave=False
        )
        for i in bar:
            example = raycast.generate_example(split, i, cfg.resolution, seed=cfg.seed)
            yield i, to_tfds_example(example, i)


@contextlib.contextmanager
def _file_lock(path: str):
    """Exclusive advisory lock, so processes sharing a data_dir build a dataset once."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(name: str, data_dir: str | None = None) -> None:
    """Builds a ``synthetic_scenes[/config]`` dataset into ``data_dir`` unless it is there.

    Any other dataset name is a no-op (those are prepared by their own recipes). ``data_dir``
    None or '' means the TFDS default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    Concurrent callers on one machine (e.g. several processes of one run) are serialised by
    a lock file, and only the first builds.
    """
    if not name.split("/")[0].split(":")[0] == NAME:
        return
    data_dir = data_dir or None
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return
    with _file_lock(os.path.dirname(os.fspath(builder.data_dir)) + ".lock"):
        builder = tfds.builder(name, data_dir=data_dir)  # re-read: another may have built it
        if builder.is_prepared():
            return
        logging.info("Building %s (%s) into %s", name, builder.version, builder.data_dir)
        builder.download_and_prepare(file_format="array_record")
        logging.info("Built %s into %s", name, builder.data_dir)
