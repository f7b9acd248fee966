"""Ray caster geometry against closed-form answers, and scene determinism."""

import dataclasses

import numpy as np
import pytest

from vq3d_jax.datasets import cameras_np, raycast, scenes

SIZE = 33  # odd: the optical axis passes through the centre of pixel (16, 16)
K = cameras_np.intrinsics_from_fov(50.0, SIZE, SIZE)


def _scene(kinds, centers, half_extents, yaws=None, ground=False, **kw):
    n = len(kinds)
    return scenes.Scene(
        kinds=np.asarray(kinds, np.int32).reshape(n),
        centers=np.asarray(centers, np.float64).reshape(n, 3),
        half_extents=np.asarray(half_extents, np.float64).reshape(n, 3),
        yaws=np.zeros(n) if yaws is None else np.asarray(yaws, np.float64),
        colors=np.full((n, 3), 0.5),
        center=np.zeros(3),
        ground=ground,
        **kw,
    )


def _camera(eye, target):
    return cameras_np.look_at(np.asarray(eye, float), np.asarray(target, float))


def _pixel_dir_world(c2w, k, row, col):
    """Independent pinhole model: camera-frame direction with z = 1, rotated to world."""
    cam = np.array([(col + 0.5 - k[0, 2]) / k[0, 0], (row + 0.5 - k[1, 2]) / k[1, 1], 1.0])
    return c2w[:3, :3] @ cam


def test_look_at_is_a_right_handed_opencv_frame():
    c2w = _camera([1.0, -2.0, -5.0], [0.3, -0.5, 0.7])
    rot = c2w[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(rot), 1.0)
    forward = np.array([0.3, -0.5, 0.7]) - np.array([1.0, -2.0, -5.0])
    np.testing.assert_allclose(rot[:, 2], forward / np.linalg.norm(forward), atol=1e-12)
    assert rot[:, 0] @ cameras_np.WORLD_UP == pytest.approx(0.0, abs=1e-12)  # no roll
    assert rot[:, 1] @ cameras_np.WORLD_UP < 0  # camera +y (image down) points to world down


def test_sphere_on_optical_axis_depth_is_distance_minus_radius():
    eye = np.array([0.7, -2.0, -4.0])
    c2w = _camera(eye, [0.2, -0.6, 1.0])  # oblique: exercises the whole rotation
    d, r = 5.0, 1.3
    centre = eye + d * c2w[:3, 2]
    out = raycast.render(_scene([scenes.SPHERE], centre, [r, r, r]), K, c2w[None], SIZE, SIZE)
    assert out.depth[0, 16, 16] == pytest.approx(d - r, rel=1e-5)
    assert out.ids[0, 16, 16] == 0
    assert np.isinf(out.depth[0, 0, 0]) and out.ids[0, 0, 0] == raycast.SKY_ID


@pytest.mark.parametrize(
    "kind, half, yaw, expected_offset",
    [
        (scenes.SPHERE, [1.0, 1.0, 1.0], 0.0, 1.0),
        (scenes.BOX, [0.6, 0.8, 0.9], 0.0, 0.9),  # the face z = -hz
        (scenes.BOX, [0.7, 0.8, 0.7], np.pi / 4, 0.7 * np.sqrt(2.0)),  # a vertical edge
        (scenes.CYLINDER, [0.8, 1.0, 0.8], 0.0, 0.8),
        (scenes.CONE, [0.8, 1.0, 0.8], 0.0, 0.4),  # half the base radius at mid-height
    ],
)
def test_each_primitive_depth_on_axis(kind, half, yaw, expected_offset):
    # Horizontal camera at the primitive's mid-height, looking along +z at its centre.
    centre = np.array([0.3, -1.0, 6.0])
    c2w = _camera(centre - [0.0, 0.0, 6.0], centre)
    out = raycast.render(_scene([kind], centre, half, yaws=[yaw]), K, c2w[None], SIZE, SIZE)
    assert out.depth[0, 16, 16] == pytest.approx(6.0 - expected_offset, rel=1e-5)


def test_ground_plane_depth_matches_ray_plane_intersection():
    eye = np.array([0.5, -3.0, -2.0])
    c2w = _camera(eye, [0.0, 0.0, 6.0])
    out = raycast.render(_scene([], [], [], ground=True), K, c2w[None], SIZE, SIZE)
    for row in range(SIZE):
        for col in (0, 9, 16, 30):
            ray = _pixel_dir_world(c2w, K, row, col)
            if ray[1] <= 0:  # pointing at or above the horizon: the sky at infinity
                assert np.isinf(out.depth[0, row, col])
                continue
            hit = eye + (-eye[1] / ray[1]) * ray  # world y = 0
            z = (c2w[:3, :3].T @ (hit - eye))[2]
            assert out.depth[0, row, col] == pytest.approx(z, rel=1e-5)
            assert out.ids[0, row, col] == raycast.GROUND_ID
    assert np.isinf(out.depth[0, 0]).all()  # the top row looks above the horizon


def test_sphere_centre_projects_to_nearest_sphere_pixel():
    eye = np.array([0.0, -1.5, -6.0])
    c2w = _camera(eye, [0.0, -0.5, 0.0])
    centre, r = np.array([1.1, -0.4, 0.8]), 0.9
    out = raycast.render(_scene([scenes.SPHERE], centre, [r] * 3), K, c2w[None], SIZE, SIZE)
    (u, v), _ = cameras_np.project(centre, K, c2w)
    # Ray distance (not z-depth) is smallest on the ray through the centre.
    rows, cols = np.nonzero(out.ids[0] == 0)
    dist = [
        out.depth[0, i, j] * np.linalg.norm(_pixel_dir_world(c2w, K, i, j))
        for i, j in zip(rows, cols)
    ]
    best = np.argmin(dist)
    assert abs(cols[best] + 0.5 - u) <= 0.5 and abs(rows[best] + 0.5 - v) <= 0.5


def test_orbit_rotates_about_the_pivot():
    pivot = np.array([0.2, -0.4, 0.5])
    c2w = cameras_np.look_at(pivot + [1.0, -2.0, -5.0], pivot)
    yaw, pitch = 0.3, -0.2
    out = cameras_np.orbit(c2w, pivot, yaw, pitch)

    # Independent construction: R = Ry(up) @ Rx(camera x), Rodrigues in cos/sin/outer form.
    def rot(axis, a):
        axis = axis / np.linalg.norm(axis)
        cross = np.cross(np.eye(3), axis)  # rows e_i x a: the matrix of v -> a x v
        return np.cos(a) * np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * np.outer(axis, axis)

    r = rot(np.array([0.0, -1.0, 0.0]), yaw) @ rot(c2w[:3, 0], pitch)
    np.testing.assert_allclose(out[:3, :3], r @ c2w[:3, :3], atol=1e-12)
    np.testing.assert_allclose(out[:3, 3], pivot + r @ (c2w[:3, 3] - pivot), atol=1e-12)
    # Still looking at the pivot, with no roll.
    _, z = cameras_np.project(pivot, K, out)
    (u, v), _ = cameras_np.project(pivot, K, out)
    assert np.allclose([u, v], [SIZE / 2, SIZE / 2]) and z > 0
    assert abs(out[:3, 0] @ cameras_np.WORLD_UP) < 1e-12


def test_generated_example_is_deterministic_and_seed_dependent():
    a = raycast.generate_example("train", 3, 32)
    b = raycast.generate_example("train", 3, 32)
    for key in ("image", "depth", "cam_to_world", "scene_center"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["novel_views"]["image"], b["novel_views"]["image"])
    assert a["label"] == b["label"]
    others = (raycast.generate_example("train", 4, 32), raycast.generate_example("test", 3, 32))
    for other in others:
        assert not np.array_equal(a["image"], other["image"])
        assert not np.allclose(a["cam_to_world"], other["cam_to_world"])


def test_generated_example_contents():
    ex = raycast.generate_example("validation", 7, 32)
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["depth"].shape == (32, 32) and ex["depth"].dtype == np.float32
    assert np.isinf(ex["depth"]).any() and (ex["depth"] > 0).all()  # sky + finite scene
    assert 0 <= ex["label"] < scenes.NUM_CLASSES
    nv = ex["novel_views"]
    k = scenes.NUM_NOVEL_VIEWS
    assert nv["image"].shape == (k, 32, 32, 3) and nv["depth"].shape == (k, 32, 32)
    np.testing.assert_allclose(
        nv["yaw_pitch"], np.deg2rad(scenes.NOVEL_VIEW_OFFSETS_DEG), atol=1e-7
    )
    # The canonical camera looks at the pivot.
    (u, v), z = cameras_np.project(ex["scene_center"], ex["intrinsics"], ex["cam_to_world"])
    np.testing.assert_allclose([u, v], [16.0, 16.0], atol=1e-3)


def test_label_is_the_class_covering_most_pixels():
    ex = raycast.generate_example("train", 11, 32)
    scene = scenes.sample_scene(scenes.scene_rng("train", 11))
    rendered = raycast.render(scene, ex["intrinsics"], ex["cam_to_world"][None], 32, 32)
    # Same scene redrawn (the float32 stored camera may move an edge pixel or two).
    assert (rendered.rgb[0] != ex["image"]).any(-1).mean() < 0.01
    counts = np.bincount(rendered.ids[0][rendered.ids[0] >= 0], minlength=len(scene.kinds))
    assert ex["label"] == scene.kinds[np.argmax(counts)]


def _surface_residual(scene, i, x):
    """Implicit distance-like residual of world points ``x`` (M, 3) to primitive ``i``."""
    kind, half = scene.kinds[i], scene.half_extents[i]
    rot = np.eye(3)
    if kind == scenes.BOX:
        rot = cameras_np.rotation_about_axis(cameras_np.WORLD_UP, scene.yaws[i])
    loc = (x - scene.centers[i]) @ rot  # R^T (x - c), row-wise
    if kind == scenes.SPHERE:
        return np.linalg.norm(loc, axis=-1) - half[0]
    if kind == scenes.BOX:
        return np.max(np.abs(loc) - half, axis=-1)
    rho = np.hypot(loc[:, 0], loc[:, 2])
    radius = half[0] * (1.0 if kind == scenes.CYLINDER else (loc[:, 1] + half[1]) / (2 * half[1]))
    return np.maximum(rho - radius, np.abs(loc[:, 1]) - half[1])


def test_every_pixel_unprojects_onto_the_surface_it_reports():
    ex = raycast.generate_example("train", 5, 64)
    scene = scenes.sample_scene(scenes.scene_rng("train", 5))
    cams = np.concatenate([ex["cam_to_world"][None], ex["novel_views"]["cam_to_world"]])
    out = raycast.render(scene, ex["intrinsics"], cams, 64, 64)
    # Same scene as generated (the stored float32 camera rounds depth a little).
    np.testing.assert_allclose(out.depth[0], ex["depth"], rtol=1e-5)
    k = ex["intrinsics"].astype(np.float64)
    seen = set()
    for view, c2w in enumerate(cams.astype(np.float64)):
        rows, cols = np.nonzero(out.ids[view] != raycast.SKY_ID)
        z = out.depth[view, rows, cols].astype(np.float64)
        x, y = (cols + 0.5 - k[0, 2]) / k[0, 0] * z, (rows + 0.5 - k[1, 2]) / k[1, 1] * z
        world = (c2w[:3, :3] @ np.stack([x, y, z])).T + c2w[:3, 3]
        ids = out.ids[view, rows, cols]
        np.testing.assert_allclose(world[ids == raycast.GROUND_ID, 1], 0.0, atol=1e-4)
        for i in np.unique(ids[ids >= 0]):
            res = _surface_residual(scene, i, world[ids == i])
            np.testing.assert_allclose(res, 0.0, atol=2e-4 * (1 + np.abs(z).max()))
            seen.add(int(scene.kinds[i]))
    assert len(seen) >= 2  # several primitive types were actually checked


def test_shadows_darken_the_ground_behind_an_object():
    light = np.array([0.0, -1.0, 0.0])  # straight down: the shadow is right under the box
    # A thin slab floating 1.5 above the ground.
    scene = _scene([scenes.BOX], [0.0, -1.5, 4.0], [2.0, 0.05, 2.0], ground=True, light_dir=light)
    c2w = _camera([0.0, -0.5, -3.0], [0.0, 0.0, 8.0])  # below the slab, seeing the ground
    lit_scene = dataclasses.replace(scene, shadows=False)
    shaded = raycast.render(scene, K, c2w[None], SIZE, SIZE)
    lit = raycast.render(lit_scene, K, c2w[None], SIZE, SIZE)
    ground = shaded.ids[0] == raycast.GROUND_ID
    darker = shaded.rgb[0].sum(-1) < lit.rgb[0].sum(-1)
    assert darker[ground].any() and not darker[~ground].any()


def test_ray_and_shadow_culling_change_nothing(monkeypatch):
    cases = []
    for i in range(6):
        rng = scenes.scene_rng("train", i)
        scene = scenes.sample_scene(rng)
        c2w = scenes.canonical_camera(scene, rng)
        orbits = [cameras_np.orbit(c2w, scene.center, 0.6 * j, 0.2) for j in (-1, 1)]
        cams = np.stack([c2w] + orbits)
        cases.append((scene, cams))
    k = cameras_np.intrinsics_from_fov(scenes.FOV_DEG, 48, 48)
    culled = [raycast.render(s, k, c, 48, 48) for s, c in cases]
    every_ray = lambda scene, k, c2w, h, w: [np.arange(len(c2w) * h * w)] * len(scene.kinds)
    monkeypatch.setattr(raycast, "_candidate_rays", every_ray)
    monkeypatch.setattr(raycast, "_near_shadow_cylinder", lambda q, c, r: np.ones(q[0].shape, bool))
    for (s, c), a in zip(cases, culled):
        b = raycast.render(s, k, c, 48, 48)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.rgb, b.rgb)
