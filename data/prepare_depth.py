r"""Pseudo-GT depth for an image dataset (VQ3D stage 1 on ImageNet and the like).

    python data/prepare_depth.py --source=imagenet2012 --data_dir=DIR \
        --splits=train,validation --depth_fn=my_module:predict \
        --output_name=imagenet2012_depth [--batch_size=32] [--image_size=256] \
        [--max_examples=N]

VQ3D (arXiv 2302.06833) supervises depth with the output of an off-the-shelf monocular
model (DPT). This script reads the TFDS dataset ``--source`` (array_record) from
``--data_dir``, decodes each image and centre-crops it to ``image_size``² exactly as the
input pipeline does (shorter side resized, then the centred square), runs the depth model
on batches of crops and writes the TFDS dataset ``--output_name`` (array_record, same
split names) into ``--data_dir``. No tensorflow and no download is needed.

The depth model is the user's: ``--depth_fn=module:function`` names a callable (``module``
importable, e.g. a file in the working directory) that maps a uint8 batch [B, H, W, 3] to
relative inverse depth (disparity, as DPT/MiDaS output: larger = nearer) float32
[B, H, W]. It gets exactly ``batch_size`` images per call (the last batch is padded with
black images whose outputs are discarded), so a compiled model sees one shape.

Features of the output:

- ``image``: the crop, uint8 [S, S, 3], PNG: lossless, so the depth lines up with exactly
  the pixels the model saw, and reading it back at ``image_size`` S resamples nothing.
- ``depth``: float32 [S, S] = 1 / disparity where disparity > 0, +inf elsewhere (sky).
- ``label``: the source's ``label`` feature, copied; absent when the source has none (the
  input pipeline then reads 0, as for any unlabelled dataset).

Why depth and not disparity: the library has one convention for every dataset (z-depth,
+inf for the background at infinity, as the synthetic scenes store it), so the input
pipeline and the depth loss treat ground truth and pseudo-GT alike. The loss takes
disparity = 1 / depth back and aligns it to the rendered disparity by a per-image
least-squares scale and shift, so a disparity known only up to an affine map (what
monocular models predict) is all it needs; the stored depth is not metric.

Source records that fail to decode are skipped and counted (the count is printed at the
end). A depth function returning the wrong shape or non-finite values stops the run with
an error naming it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath

# Runnable as `python data/prepare_depth.py` from a checkout (no install needed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vq3d_jax.datasets import pipeline, synthetic_scenes  # noqa: E402

DepthFn = Callable[[np.ndarray], np.ndarray]


def load_callable(spec: str) -> DepthFn:
    """``module:function`` (or ``module:object.method``) → the callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--depth_fn={spec!r}: expected 'module:function'.")
    # As a script, sys.path[0] is data/, not the caller's directory, where `module`
    # usually lives.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    fn = functools.reduce(getattr, attr.split("."), importlib.import_module(module_name))
    if not callable(fn):
        raise TypeError(f"--depth_fn={spec!r} is a {type(fn).__name__}, not a callable.")
    return fn


def depth_from_disparity(
    depth_fn: DepthFn, spec: str, images: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Runs the depth model on a batch; z-depth 1/disparity, +inf where disparity <= 0."""
    disparity = np.asarray(depth_fn(images), dtype=np.float32)
    if disparity.shape != images.shape[:3]:
        raise ValueError(
            f"--depth_fn={spec} returned shape {disparity.shape} for images of shape "
            f"{images.shape}; expected disparity [B, H, W] = {images.shape[:3]}."
        )
    # Only the examples that are written are checked: a model that normalises per image
    # may well return NaN for the black padding images.
    bad = ~np.isfinite(disparity[mask])
    if bad.any():
        raise ValueError(
            f"--depth_fn={spec} returned {int(bad.sum())} non-finite values (NaN/inf) for "
            f"images of shape {images.shape}; expected finite disparity [B, H, W]."
        )
    depth = np.full(disparity.shape, np.inf, np.float32)
    return np.divide(np.float32(1.0), disparity, out=depth, where=disparity > 0)


class PseudoDepthDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Centre crops of a source dataset with pseudo-GT depth from a monocular model."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, args: argparse.Namespace, depth_fn: DepthFn):
        self.name = args.output_name  # per instance: the dataset's name is a flag
        self._args = args
        self._depth_fn = depth_fn
        self._source_cfg = ml_collections.ConfigDict(
            {
                "name": args.source,
                "data_dir": args.data_dir,
                "image_size": args.image_size,
                "with_depth": False,
                "with_novel_views": False,
            }
        )
        source_features = tfds.builder(args.source, data_dir=args.data_dir or None).info.features
        self._label = source_features["label"] if "label" in source_features else None
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
        features = {
            "image": f.Image(shape=(s, s, 3), encoding_format="png"),
            # zlib: lossless and decodable without tensorflow, like the synthetic scenes.
            "depth": f.Tensor(shape=(s, s), dtype=np.float32, encoding="zlib"),
        }
        if self._label is not None:
            features["label"] = self._label
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"{self.__doc__} Source: {self._args.source}; depth model: "
                f"{self._args.depth_fn}; crops of {s}x{s}."
            ),
            features=f.FeaturesDict(features),
            supervised_keys=("image", "label") if self._label is not None else None,
            # Keep the source's order: record i is the i-th good source record.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # A synthetic-scenes source is built on first use.
        pipeline.prepare(self._source_cfg, process_index=0, process_count=1)
        return {split: self._generate_examples(split) for split in self._args.splits}

    def _generate_examples(self, split: str):
        args = self._args
        # The eval iterator reads in a fixed order and pads and masks the last batch.
        batches = pipeline.create_eval_iterator(
            self._source_cfg,
            split=split,
            global_batch_size=args.batch_size,
            num_examples=args.max_examples,
            process_index=0,
            process_count=1,
        )
        bar = tqdm.tqdm(
            total=batches.num_examples, desc=f"{self.name} {split}", unit="img", leave=False
        )
        written = skipped = 0
        # With one process, slot j of batch b is source record b * batch_size + j.
        for b, batch in enumerate(batches):
            mask = batch["mask"]
            depth = depth_from_disparity(self._depth_fn, args.depth_fn, batch["image"], mask)
            for j in np.flatnonzero(mask):
                image = synthetic_scenes.encode_png(batch["image"][j])
                example = {"image": image, "depth": depth[j]}
                if self._label is not None:
                    example["label"] = batch["label"][j]
                yield b * args.batch_size + int(j), example
            written += int(mask.sum())
            skipped = int(batch["num_skipped"])
            bar.update(min(len(mask), bar.total - bar.n))
        bar.close()
        self.counts[split] = (written, skipped)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="source TFDS name, e.g. imagenet2012")
    parser.add_argument("--data_dir", default="", help="TFDS data dir (default: TFDS's own)")
    parser.add_argument("--splits", default="train,validation", help="comma-separated")
    parser.add_argument("--depth_fn", required=True, help="module:function (the depth model)")
    parser.add_argument("--output_name", required=True, help="name of the new TFDS dataset")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--max_examples", type=int, default=None, help="per split")
    args = parser.parse_args(argv)
    args.splits = [s for s in args.splits.split(",") if s]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """Builds the dataset; returns {split: (examples written, bad records skipped)}."""
    args = _parse(argv)
    builder = PseudoDepthDataset(args, load_callable(args.depth_fn))
    if builder.is_prepared():
        raise FileExistsError(
            f"{args.output_name} {builder.version} already exists in {builder.data_dir}; "
            "delete that folder to rebuild it."
        )
    builder.download_and_prepare(file_format="array_record")
    for split, (written, skipped) in builder.counts.items():
        print(f"{args.output_name}/{split}: {written} examples, {skipped} bad records skipped")
    print(f"Wrote {builder.data_dir}")
    return builder.counts


if __name__ == "__main__":
    main()
