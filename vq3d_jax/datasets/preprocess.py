"""One raw record → one numpy example: image decoding, resize/crop, views, cameras, flips.

Pure numpy and PIL (no TFDS, no grain). :func:`resize_geometry` and :func:`resize_crop`
are the one resize-and-centre-crop of the library (render mode's image folders use them
too); :func:`preprocess` raises :class:`BadRecordError` for a record it cannot use, which
the pipeline turns into a counted skip (:mod:`.bad_records`).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from PIL import Image

# Reflection of the world x axis (and of the camera x axis): the camera of a
# horizontally flipped image is D @ c2w @ D, still a proper right-handed rotation.
FLIP_X = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)


class BadRecordError(ValueError):
    """A record that cannot be decoded or has inconsistent shapes."""


def setting(data: Any, key: str, default: Any) -> Any:
    """``data[key]`` of a data config (ConfigDict, dict or object); absent or None: default."""
    try:
        value = data.get(key, default)
    except AttributeError:
        value = getattr(data, key, default)
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class Options:
    """What the per-example preprocessing needs (picklable, for worker processes)."""

    image_size: int
    with_depth: bool
    with_novel_views: bool
    random_flip: bool
    with_cameras: bool = False


def options(data: Any, *, train: bool) -> Options:
    """The preprocessing options of a data config; random flips only for training."""
    return Options(
        image_size=int(setting(data, "image_size", 64)),
        with_depth=bool(setting(data, "with_depth", True)),
        with_novel_views=bool(setting(data, "with_novel_views", False)),
        random_flip=train and bool(setting(data, "random_flip", False)),
        # Cameras come with depth unless a config asks for them alone (the GANs).
        with_cameras=bool(setting(data, "with_cameras", setting(data, "with_depth", True))),
    )


def _decode_image(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        image = data  # already decoded (e.g. an in-memory source)
    else:
        if isinstance(data, np.ndarray):  # 0-d object/bytes array from a TFDS sequence
            data = data.item()
        with Image.open(io.BytesIO(bytes(data))) as im:
            image = np.asarray(im.convert("RGB"))  # convert() forces the full decode
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise BadRecordError(f"image has shape {image.shape}, expected [H, W, 3]")
    return image


def resize_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Shorter side → ``size``, then a centred size×size crop: (new_w, new_h, left, top)."""
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def resize_crop(array: np.ndarray, geometry, size: int, resample: int) -> np.ndarray:
    """``array`` [H, W(, 3)] resized and cropped as ``geometry`` (from resize_geometry) says.

    ``resample``: a PIL filter (``Image.BILINEAR``, ``Image.NEAREST``, ...).
    """
    new_w, new_h, left, top = geometry
    if array.shape[:2] != (new_h, new_w):
        # float32 [H, W] becomes a 32-bit float ("F") image, uint8 [H, W, 3] an RGB one.
        im = Image.fromarray(np.ascontiguousarray(array)).resize((new_w, new_h), resample)
        array = np.asarray(im)
    return array[top : top + size, left : left + size]


def crop_intrinsics(intrinsics: np.ndarray, height: int, width: int,
                    geometry) -> np.ndarray:
    """Intrinsics of a [height, width] image → those of its `resize_crop` by `geometry`."""
    new_w, new_h, left, top = geometry
    # Continuous pixel coordinates (origin at the corner) map as u' = u*sx - left.
    affine = np.array(
        [[new_w / width, 0.0, -left], [0.0, new_h / height, -top], [0.0, 0.0, 1.0]],
        np.float32)
    return affine @ np.asarray(intrinsics, np.float32)


def _view(image, depth, intrinsics, cam_to_world, *, size: int, flip: bool) -> dict:
    """Decode, resize/crop and optionally flip one view; intrinsics follow the pixels.

    ``depth`` may come without a camera (``intrinsics`` and ``cam_to_world`` None).
    """
    image = _decode_image(image)
    h, w = image.shape[:2]
    geometry = resize_geometry(h, w, size)
    out = {"image": resize_crop(image, geometry, size, Image.BILINEAR)}
    if depth is not None:
        depth = np.asarray(depth, np.float32)
        if depth.shape != (h, w):
            raise BadRecordError(f"depth {depth.shape} does not fit an image of {h}x{w}")
        out["depth"] = resize_crop(depth, geometry, size, Image.NEAREST)
    with_cam = intrinsics is not None
    if with_cam:
        k = np.asarray(intrinsics, np.float32)
        c2w = np.asarray(cam_to_world, np.float32)
        if k.shape != (3, 3) or c2w.shape != (4, 4):
            raise BadRecordError(
                f"intrinsics {k.shape} / cam_to_world {c2w.shape} are not 3x3 / 4x4"
            )
        out["intrinsics"] = crop_intrinsics(k, h, w, geometry)
        out["cam_to_world"] = c2w
    if flip:
        out["image"] = out["image"][:, ::-1]
        if depth is not None:
            out["depth"] = out["depth"][:, ::-1]
        if with_cam:
            # u -> size - u, i.e. c_x -> size - c_x; the world is mirrored in x.
            out["intrinsics"] = out["intrinsics"].copy()
            out["intrinsics"][0, 2] = size - out["intrinsics"][0, 2]
            out["intrinsics"][0, 1] *= -1.0
            out["cam_to_world"] = FLIP_X @ out["cam_to_world"] @ FLIP_X
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def preprocess(record: dict, opts: Options, flip: bool = False) -> dict:
    """One raw record (encoded images) → the numpy example described in :mod:`.pipeline`.

    Raises BadRecordError (or whatever the image decoder raises) for a bad record.
    """
    size = opts.image_size
    with_depth = opts.with_depth and "depth" in record
    # The synthetic scenes and EG3D-format datasets carry cameras; pseudo-GT depth
    # datasets do not.
    with_cam = opts.with_cameras and "intrinsics" in record and "cam_to_world" in record
    main = _view(
        record["image"],
        record["depth"] if with_depth else None,
        *(record["intrinsics"], record["cam_to_world"]) if with_cam else (None, None),
        size=size,
        flip=flip,
    )
    out = {**main, "label": np.int32(record.get("label", 0))}
    nv = record.get("novel_views")
    if opts.with_novel_views and nv is not None:
        n = len(nv["image"])
        if any(len(nv[k]) != n for k in ("depth", "intrinsics", "cam_to_world", "yaw_pitch")):
            raise BadRecordError("novel views have inconsistent counts")
        views = [
            _view(
                nv["image"][i],
                nv["depth"][i],
                nv["intrinsics"][i],
                nv["cam_to_world"][i],
                size=size,
                flip=flip,
            )
            for i in range(n)
        ]
        yaw_pitch = np.asarray(np.stack(nv["yaw_pitch"]), np.float32).reshape(n, 2)
        if flip:  # mirroring the world reverses rotations about the (unmirrored) up axis
            yaw_pitch = yaw_pitch * np.array([-1.0, 1.0], np.float32)
        for key in ("image", "depth", "intrinsics", "cam_to_world"):
            out[f"novel_{key}"] = np.stack([v[key] for v in views])
        out["novel_yaw_pitch"] = yaw_pitch
    return out
