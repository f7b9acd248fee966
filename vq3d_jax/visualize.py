"""Turning model outputs into things people look at: depth maps, meshes, videos.

`colorize_depth` is pure `jax.numpy` so sample functions can call it under `jit`;
the rest runs on host arrays and writes files atomically (temp file + `os.replace`),
so a crash never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import jax.numpy as jnp
import numpy as np
from PIL import Image

# A magma-like ramp, dark purple → pale yellow. Luminance rises strictly from one
# anchor to the next, so nearer (larger disparity) is always brighter.
_RAMP = np.array(
    [
        [0, 0, 4],
        [28, 16, 68],
        [79, 18, 123],
        [129, 37, 129],
        [181, 54, 122],
        [229, 80, 100],
        [251, 135, 97],
        [252, 253, 191],
    ],
    np.float32,
)


def colorize_depth(disparity, lo=None, hi=None) -> jnp.ndarray:
    """Disparity (1/depth, 0 = infinitely far) [..., H, W] → uint8 colours [..., H, W, 3].

    Each image is normalised between its 2nd and 98th percentile, so a few outliers
    do not wash out the rest; `lo`/`hi` (scalars, or broadcastable to [..., 1, 1])
    fix the range instead, e.g. to compare frames of one orbit.
    """
    disparity = jnp.asarray(disparity, jnp.float32)
    if lo is None or hi is None:
        q = jnp.percentile(disparity, jnp.array([2.0, 98.0]), axis=(-2, -1), keepdims=True)
        lo = q[0] if lo is None else lo
        hi = q[1] if hi is None else hi
    # A constant image has hi == lo: the floor keeps 0/0 from becoming NaN.
    span = jnp.maximum(jnp.asarray(hi, jnp.float32) - lo, 1e-12)
    t = jnp.clip((disparity - lo) / span, 0.0, 1.0)

    pos = t * (len(_RAMP) - 1)
    i = jnp.minimum(jnp.floor(pos).astype(jnp.int32), len(_RAMP) - 2)
    frac = (pos - i)[..., None]
    ramp = jnp.asarray(_RAMP)
    rgb = ramp[i] * (1.0 - frac) + ramp[i + 1] * frac
    return jnp.round(rgb).astype(jnp.uint8)


def grid_points(bounds: tuple[np.ndarray, np.ndarray], resolution: int) -> np.ndarray:
    """World coordinates [N, N, N, 3] (float32, 'ij' order) of the grid `extract_mesh` assumes.

    Point [i, j, k] is `min + (i, j, k) * (max - min) / (N - 1)`.
    """
    lo, hi = _check_bounds(bounds)
    axes = [np.linspace(lo[a], hi[a], resolution) for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)


class NoSurfaceError(ValueError):
    """The density grid never crosses the requested level: there is no mesh to extract."""


def extract_mesh(
    density: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], level: float
) -> tuple[np.ndarray, np.ndarray]:
    """The `level` isosurface of a density grid sampled on `grid_points(bounds, N)`.

    Returns vertices [V, 3] float32 in world units and faces [F, 3] int32, wound so
    that normals point from high density to low (outwards for a solid).
    """
    # Imported here so that training, which never meshes, does not need scikit-image.
    from skimage import measure

    # A copy: arrays fetched from JAX are read-only, and marching_cubes refuses them.
    density = np.array(density, np.float32)
    if density.ndim != 3 or min(density.shape) < 2:
        raise ValueError(f"density must be a 3-D grid of at least 2³, got {density.shape}.")
    lo, hi = _check_bounds(bounds)
    d_min, d_max = float(density.min()), float(density.max())
    if not d_min < level < d_max:
        raise NoSurfaceError(
            f"The grid holds no surface at level {level}: its density spans "
            f"[{d_min:.6g}, {d_max:.6g}]. Pick a level inside that range."
        )
    spacing = tuple((hi - lo) / (np.array(density.shape) - 1))
    # "ascent": skimage's default winds faces for fields that fall towards the object,
    # which would turn a density solid's normals inwards.
    verts, faces, _, _ = measure.marching_cubes(
        density, level, spacing=spacing, gradient_direction="ascent"
    )
    return (verts + lo).astype(np.float32), faces.astype(np.int32)


def write_ply(
    path: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None
) -> None:
    """Binary little-endian PLY; `colors` [V, 3] as float in [0, 1] or uint8."""
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got {vertices.shape}.")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {faces.shape}.")

    vertex_fields = [("xyz", "<f4", 3)]
    header = [
        "ply",
        "format binary_little_endian 1.0",
        f"element vertex {len(vertices)}",
        "property float x",
        "property float y",
        "property float z",
    ]
    if colors is not None:
        colors = _to_uint8(np.asarray(colors))
        if colors.shape != vertices.shape:
            raise ValueError(f"colors must be [V, 3] = {vertices.shape}, got {colors.shape}.")
        vertex_fields.append(("rgb", "u1", 3))
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [
        f"element face {len(faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]

    vertex_data = np.empty(len(vertices), np.dtype(vertex_fields))
    vertex_data["xyz"] = vertices
    if colors is not None:
        vertex_data["rgb"] = colors
    face_data = np.empty(len(faces), np.dtype([("n", "u1"), ("idx", "<i4", 3)]))
    face_data["n"] = 3
    face_data["idx"] = faces

    with _atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertex_data.tobytes())
        f.write(face_data.tobytes())


def write_video(path: str, frames: np.ndarray, fps: float = 12) -> None:
    """uint8 frames [T, H, W, 3] → a looping .gif (PIL) or an .mp4 (imageio + ffmpeg)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}.")
    if frames.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, C], got {frames.shape}.")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gif":
        images = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f) for f in frames]
        with _atomic_path(path) as tmp:
            images[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=1000 / fps,
                loop=0,
            )
    elif ext == ".mp4":
        try:
            import imageio.v3 as iio
            import imageio_ffmpeg  # noqa: F401  (imageio's FFMPEG plugin needs it)
        except ImportError as err:
            raise ImportError(
                "Writing .mp4 needs imageio's ffmpeg plugin: `pip install imageio[ffmpeg]`, "
                "or write a .gif instead."
            ) from err
        with _atomic_path(path) as tmp:
            iio.imwrite(tmp, frames, plugin="FFMPEG", fps=fps)
    else:
        raise ValueError(f"Unsupported video extension {ext!r}; use .gif or .mp4.")


def _check_bounds(bounds) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = (np.asarray(b, np.float64).reshape(3) for b in bounds)
    # Reversed bounds would mirror the mesh and flip its winding.
    if np.any(hi <= lo):
        raise ValueError(f"bounds need max > min on every axis, got min={lo}, max={hi}.")
    return lo, hi


def _to_uint8(colors: np.ndarray) -> np.ndarray:
    if colors.dtype == np.uint8:
        return colors
    if np.issubdtype(colors.dtype, np.floating):
        return np.round(np.clip(colors, 0.0, 1.0) * 255).astype(np.uint8)
    raise TypeError(f"colors must be float in [0, 1] or uint8, got {colors.dtype}.")


@contextlib.contextmanager
def _atomic_path(path: str):
    """Yields a temp path beside `path` (same extension) that replaces `path` on success."""
    head, tail = os.path.split(path)
    stem, ext = os.path.splitext(tail)
    # Same directory so os.replace is a rename, not a copy; the extension is kept
    # because writers pick the format from it.
    tmp = os.path.join(head, f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
