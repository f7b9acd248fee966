r"""A TFDS dataset (array_record) from images with EG3D-format cameras.

    python data/prepare_eg3d.py --source=PATH --output_name=ffhq256 \
        [--data_dir=DIR] [--image_size=256] [--num_validation=1000] [--max_examples=N]

The 3D-GAN community ships FFHQ, AFHQ and the like as EG3D does (Chan et al. 2022,
``dataset_tool.py``): a folder or a ``.zip`` of images with a ``dataset.json`` at its root,

    {"labels": [["00000/img00000000.png", [16 cam-to-world, 9 normalised intrinsics]], ...]}

This script reads any such folder or zip and writes the TFDS dataset ``--output_name``
into ``--data_dir`` with the splits ``train`` and ``validation`` (the last
``--num_validation`` labelled images in file-name order: EG3D's mirrored copies
``…_mirror.png`` sort beside their originals, so a pair stays on one side but for at most
one pair at the boundary). Features:

- ``image``: uint8 [S, S, 3] PNG, S = ``--image_size`` (the shorter side resized to S with
  Lanczos, then the centred square, as the input pipeline crops);
- ``cam_to_world`` [4, 4] and ``intrinsics`` [3, 3] (pixels of the S² image) in the
  library's convention, converted from EG3D's at this boundary
  (``vq3d_jax/datasets/eg3d_cameras.py``: world y and z flipped, intrinsics × S);
- ``id``: the image's index in ``dataset.json``.

Images that fail to decode, labels naming a missing file and labels that are not 25
numbers are skipped and counted (printed at the end, each named in the log); a folder
with no ``dataset.json``, or one with no labels, is an error. No download, no tensorflow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging
from etils import epath
from PIL import Image

# Runnable as `python data/prepare_eg3d.py` from a checkout (no install needed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vq3d_jax.datasets import eg3d_cameras, preprocess, synthetic_scenes  # noqa: E402

LABELS_FILE = "dataset.json"


class ImageStore:
    """The images and ``dataset.json`` of an EG3D-format folder or zip, by relative path."""

    def __init__(self, path: str):
        self.path = path
        self._zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
        if self._zip is None and not os.path.isdir(path):
            raise FileNotFoundError(f"--source={path!r} is neither a folder nor a zip file.")

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()

    def labels(self) -> list[tuple[str, list]]:
        try:
            meta = json.loads(self.read(LABELS_FILE))
        except (KeyError, FileNotFoundError):
            raise FileNotFoundError(
                f"--source={self.path!r} has no {LABELS_FILE} at its root: an EG3D-format "
                "dataset lists its images and cameras there.") from None
        labels = meta.get("labels") if isinstance(meta, dict) else None
        if not labels:
            raise ValueError(f"{self.path}/{LABELS_FILE} has no camera labels "
                             "(expected {\"labels\": [[file, [25 numbers]], ...]}).")
        return sorted((str(name), label) for name, label in labels)


def load_image(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int, int, int],
                                                tuple[int, int]]:
    """Encoded image → (uint8 [size, size, 3]: shorter side to `size` then the centred
    square, that crop's geometry, the original (height, width))."""
    with Image.open(io.BytesIO(data)) as im:
        image = np.asarray(im.convert("RGB"))
    geometry = preprocess.resize_geometry(image.shape[0], image.shape[1], size)
    return (preprocess.resize_crop(image, geometry, size, Image.LANCZOS), geometry,
            image.shape[:2])


class EG3DFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images with EG3D `dataset.json` cameras, converted to the library's convention."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, args: argparse.Namespace):
        self.name = args.output_name  # per instance: the dataset's name is a flag
        self._args = args
        self.counts: dict[str, tuple[int, int]] = {}  # split → (written, skipped)
        super().__init__(data_dir=args.data_dir or None, file_format="array_record")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default lookup imports `importlib_resources`, which it does not declare.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self._args.image_size
        f = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.__doc__} Source: {self._args.source}; {s}x{s}.",
            features=f.FeaturesDict({
                "id": f.Scalar(dtype=np.int64, doc="Index of the image in dataset.json."),
                "image": f.Image(shape=(s, s, 3), encoding_format="png"),
                "cam_to_world": f.Tensor(shape=(4, 4), dtype=np.float32),
                "intrinsics": f.Tensor(shape=(3, 3), dtype=np.float32),
            }),
            disable_shuffling=True,  # record i is the i-th good image of its split
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        store = ImageStore(self._args.source)
        labels = list(enumerate(store.labels()))[: self._args.max_examples]
        cut = max(0, len(labels) - self._args.num_validation)
        return {"train": self._generate_examples(store, labels[:cut], "train"),
                "validation": self._generate_examples(store, labels[cut:], "validation")}

    def _generate_examples(self, store: ImageStore, labels, split: str) -> Iterator:
        size = self._args.image_size
        written = skipped = 0
        for index, (name, label) in tqdm.tqdm(labels, desc=f"{self.name} {split}",
                                              unit="img", leave=False):
            try:
                image, geometry, (height, width) = load_image(store.read(name), size)
                intrinsics, cam_to_world = eg3d_cameras.from_eg3d_label(label, height, width)
                intrinsics = preprocess.crop_intrinsics(intrinsics, height, width, geometry)
            except Exception as error:  # noqa: BLE001 - any bad file is a counted skip
                logging.warning("Skipping %s: %s", name, error)
                skipped += 1
                continue
            yield index, {
                "id": index,
                "image": synthetic_scenes.encode_png(image),
                "cam_to_world": cam_to_world.astype(np.float32),
                "intrinsics": intrinsics,
            }
            written += 1
        self.counts[split] = (written, skipped)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="folder or .zip with images and dataset.json")
    parser.add_argument("--output_name", required=True, help="name of the new TFDS dataset")
    parser.add_argument("--data_dir", default="", help="TFDS data dir (default: TFDS's own)")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--num_validation", type=int, default=1000,
                        help="the last N labelled images form the validation split")
    parser.add_argument("--max_examples", type=int, default=None,
                        help="use only the first N labels (a quick trial)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """Builds the dataset; returns {split: (examples written, bad records skipped)}."""
    args = _parse(argv)
    builder = EG3DFolder(args)
    if builder.is_prepared():
        raise FileExistsError(
            f"{args.output_name} {builder.version} already exists in {builder.data_dir}; "
            "delete that folder to rebuild it.")
    builder.download_and_prepare(file_format="array_record")
    for split, (written, skipped) in builder.counts.items():
        print(f"{args.output_name}/{split}: {written} examples, {skipped} bad records skipped")
    print(f"Wrote {builder.data_dir}")
    return builder.counts


if __name__ == "__main__":
    main()
