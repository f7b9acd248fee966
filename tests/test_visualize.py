import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vq3d_jax import visualize


def _luma(rgb):
    rgb = np.asarray(rgb, np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


# --- colorize_depth ---------------------------------------------------------------


def test_colorize_depth_shape_and_dtype():
    disparity = np.random.default_rng(0).uniform(0, 2, (2, 5, 7))
    out = visualize.colorize_depth(disparity)
    assert out.shape == (2, 5, 7, 3) and out.dtype == np.uint8
    assert visualize.colorize_depth(disparity[0]).shape == (5, 7, 3)


def test_colorize_depth_luminance_strictly_increases_with_disparity():
    ramp = np.linspace(0.0, 1.0, 64)[None, :]
    luma = _luma(visualize.colorize_depth(ramp, lo=0.0, hi=1.0)[0])
    assert np.all(np.diff(luma) > 0)
    # The percentile range clips the ends, which may only flatten them.
    luma = _luma(visualize.colorize_depth(ramp)[0])
    assert np.all(np.diff(luma) >= 0) and luma[-1] > luma[0] + 200


def test_colorize_depth_nearer_is_brighter():
    disparity = np.full((16, 16), 0.1)  # far background
    disparity[4:12, 4:12] = 2.0  # near object
    luma = _luma(visualize.colorize_depth(disparity))
    assert luma[8, 8] > luma[0, 0] + 100


def test_colorize_depth_normalises_each_image():
    image = np.random.default_rng(1).uniform(0.5, 1.0, (8, 8))
    out = visualize.colorize_depth(np.stack([image, 10 * image]))
    np.testing.assert_array_equal(out[0], out[1])


def test_colorize_depth_constant_and_infinitely_far_images_are_finite():
    disparity = np.stack([np.full((4, 4), 0.5), np.zeros((4, 4))])
    out = jax.jit(visualize.colorize_depth)(disparity)
    # NaN cast to uint8 is arbitrary; every pixel must be the ramp's first colour.
    np.testing.assert_array_equal(out, np.broadcast_to(visualize._RAMP[0], out.shape))


# --- extract_mesh -----------------------------------------------------------------


def _sphere(center, bounds, n=48, r0=0.6):
    points = visualize.grid_points(bounds, n)
    density = r0 - np.linalg.norm(points - np.asarray(center), axis=-1)
    return visualize.extract_mesh(density, bounds, level=0.0)


def test_grid_points_match_mesh_indexing():
    bounds = (np.array([-0.7, -1.0, 0.0]), np.array([1.3, 1.0, 3.0]))
    points = visualize.grid_points(bounds, 5)
    assert points.shape == (5, 5, 5, 3) and points.dtype == np.float32
    np.testing.assert_allclose(points[2, 0, 4], [-0.7 + 2 * 0.5, -1.0, 3.0], atol=1e-6)


def test_extract_mesh_sphere_radius_and_area():
    bounds = (np.full(3, -1.0), np.full(3, 1.0))
    verts, faces = _sphere((0, 0, 0), bounds)
    assert verts.dtype == np.float32 and faces.dtype == np.int32
    voxel = 2.0 / 47
    assert np.abs(np.linalg.norm(verts, axis=-1) - 0.6).max() < voxel

    a, b, c = (verts[faces[:, k]].astype(np.float64) for k in range(3))
    cross = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(cross, axis=-1).sum()
    assert abs(area / (4 * np.pi * 0.6**2) - 1) < 0.03
    # Consistent outward winding: the signed volume is the ball's, not its negative.
    volume = np.einsum("ij,ij->i", a, cross).sum() / 6
    assert abs(volume / (4 / 3 * np.pi * 0.6**3) - 1) < 0.03


def test_extract_mesh_uses_world_units_per_axis():
    # Off-centre, and a z extent unlike x/y: a wrong offset or a shared spacing shows.
    center = np.array([0.3, 0.0, 0.0])
    bounds = (np.array([-0.7, -1.0, -0.8]), np.array([1.3, 1.0, 0.8]))
    verts, _ = _sphere(center, bounds)
    radius = np.linalg.norm(verts - center, axis=-1)
    assert np.abs(radius - 0.6).max() < 2.0 / 47
    np.testing.assert_allclose(verts.mean(0), center, atol=0.01)


def test_extract_mesh_level_outside_range_is_explained():
    density = np.linspace(0, 1, 8**3).reshape(8, 8, 8)
    bounds = (np.zeros(3), np.ones(3))
    with pytest.raises(visualize.NoSurfaceError, match=r"no surface at level 2.*\[0, 1\]"):
        visualize.extract_mesh(density, bounds, level=2.0)


def test_extract_mesh_takes_a_read_only_grid_as_jax_hands_it_back():
    # jax.device_get returns read-only arrays; marching_cubes once refused them, and
    # --mode=render skipped every mesh as if it had no surface.
    bounds = (np.full(3, -1.0), np.full(3, 1.0))
    density = np.asarray(jax.device_get(jnp.asarray(
        0.6 - np.linalg.norm(visualize.grid_points(bounds, 16), axis=-1))))
    assert not density.flags.writeable
    verts, faces = visualize.extract_mesh(density, bounds, level=0.0)
    assert len(faces) > 0 and np.abs(np.linalg.norm(verts, axis=-1) - 0.6).max() < 2.0 / 15


# --- write_ply --------------------------------------------------------------------


def _read_ply(path):
    with open(path, "rb") as f:
        data = f.read()
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    counts = {line.split()[1]: int(line.split()[2]) for line in lines if line.startswith("elem")}
    has_color = "property uchar red" in lines
    vertex = np.dtype([("xyz", "<f4", 3)] + ([("rgb", "u1", 3)] if has_color else []))
    face = np.dtype([("n", "u1"), ("idx", "<i4", 3)])
    n_vertex_bytes = counts["vertex"] * vertex.itemsize
    assert len(body) == n_vertex_bytes + counts["face"] * face.itemsize
    vertices = np.frombuffer(body[:n_vertex_bytes], vertex)
    faces = np.frombuffer(body[n_vertex_bytes:], face)
    assert np.all(faces["n"] == 3)
    return vertices["xyz"], faces["idx"], vertices["rgb"] if has_color else None


def test_write_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(10, 3)).astype(np.float32)
    faces = rng.integers(0, 10, (7, 3)).astype(np.int32)
    colors = rng.integers(0, 256, (10, 3)).astype(np.uint8)
    path = str(tmp_path / "mesh.ply")

    visualize.write_ply(path, verts, faces, colors)
    got_verts, got_faces, got_colors = _read_ply(path)
    np.testing.assert_array_equal(got_verts, verts)
    np.testing.assert_array_equal(got_faces, faces)
    np.testing.assert_array_equal(got_colors, colors)
    assert os.listdir(tmp_path) == ["mesh.ply"]  # no temp file left behind

    visualize.write_ply(path, verts, faces, colors / 255.0)
    np.testing.assert_array_equal(_read_ply(path)[2], colors)
    visualize.write_ply(path, verts, faces)
    assert _read_ply(path)[2] is None


# --- write_video ------------------------------------------------------------------


def _frames(t=3):
    frames = np.zeros((t, 6, 8, 3), np.uint8)
    for i in range(t):
        frames[i, :, : 2 * (i + 1)] = (255, 40 * i, 0)
    return frames


def test_write_video_gif(tmp_path):
    frames = _frames()
    path = str(tmp_path / "orbit.gif")
    visualize.write_video(path, frames, fps=12.5)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        assert gif.info["loop"] == 0 and gif.info["duration"] == 80
        np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), frames[0])


def test_write_video_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "orbit.gif"
    path.write_bytes(b"previous")

    def crash(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a gif")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        visualize.write_video(str(path), _frames())
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["orbit.gif"]


def test_write_video_mp4_without_ffmpeg_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes its import fail
    with pytest.raises(ImportError, match=r"pip install imageio\[ffmpeg\]"):
        visualize.write_video(str(tmp_path / "orbit.mp4"), _frames())
    assert os.listdir(tmp_path) == []


# imageio-ffmpeg spawns ffmpeg by fork + exec; the child runs no JAX code, so JAX's
# fork-deadlock warning does not apply.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_write_video_mp4(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    path = str(tmp_path / "orbit.mp4")
    # 48×64: multiples of ffmpeg's 16-pixel macro blocks, so nothing is resized.
    visualize.write_video(path, np.repeat(np.repeat(_frames(4), 8, 1), 8, 2), fps=12)
    n_frames, seconds = imageio_ffmpeg.count_frames_and_secs(path)
    assert n_frames == 4 and seconds == pytest.approx(4 / 12, abs=0.01)
    assert os.listdir(tmp_path) == ["orbit.mp4"]
