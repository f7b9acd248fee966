"""VQ3D stage 1's own maths: novel-view cameras, eval camera transfer, AbsRel, render mode."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NERF_TINY_OVERRIDES

from configs import vq3d_stage1
from vq3d_jax import geometry as geo
from vq3d_jax import losses
from vq3d_jax.geometry import disparity_from_depth
from vq3d_jax.tasks import get_task
from vq3d_jax.tasks.common import take_pixels
from vq3d_jax.tasks.vq3d_stage1 import VQ3DStage1Task, fixed_keys


def _config(**extra):
    config = vq3d_stage1.get_config("tiny")
    for key, value in {**NERF_TINY_OVERRIDES, "data.image_size": 32, **extra}.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def test_decoder_choice_selects_the_task():
    assert isinstance(get_task(_config()), VQ3DStage1Task)
    assert type(get_task(_config(**{"model.decoder": "vit2d"}))).__name__ == "ViTVQGANTask"
    with pytest.raises(ValueError, match="depth_alignment"):
        get_task(_config(**{"loss.depth_alignment": "affine"}))
    task = get_task(_config())
    assert task.train_keys == ("image", "depth")
    assert {"depth", "cam_to_world", "novel_image", "novel_cam_to_world"} <= set(task.eval_keys)


def test_novel_cameras_orbit_a_pivot_at_the_median_rendered_depth():
    task = get_task(_config())
    r = task.config.render
    # Disparity maps whose medians are 1/4 and 1/7: pivots at z-depth 4 and 7.
    disparity = jnp.stack([
        jnp.full((16, 16), 0.25).at[:3].set(0.0),  # a few sky rays do not move the median
        jnp.full((16, 16), 1.0 / 7.0).at[:, :5].set(1.0),
    ])
    yaw, pitch = jnp.array([0.3, -0.2]), jnp.array([-0.1, 0.15])
    cams = task.orbit_cameras(disparity, yaw, pitch)
    canonical = np.asarray(task.cam_to_world)
    for i, depth in enumerate((4.0, 7.0)):
        pivot = canonical[:3, 3] + depth * canonical[:3, 2]
        uv, z = geo.project(pivot, task.intrinsics, cams[i])
        np.testing.assert_allclose(uv, [r.resolution / 2] * 2, atol=1e-4)  # stays centred
        assert float(z) == pytest.approx(depth, rel=1e-5)  # at the same distance
        # The rotation between the views is yaw about up composed with pitch: angle check.
        rel = np.asarray(cams[i][:3, :3]) @ canonical[:3, :3].T
        angle = np.arccos((np.trace(rel) - 1) / 2)
        expected = np.arccos(np.cos(float(yaw[i])) * np.cos(float(pitch[i])))
        assert angle >= expected - 1e-5 and angle <= abs(yaw[i]) + abs(pitch[i]) + 1e-5
    # No rotation → the canonical camera itself.
    same = task.orbit_cameras(disparity, jnp.zeros(2), jnp.zeros(2))
    np.testing.assert_allclose(same, np.broadcast_to(canonical, (2, 4, 4)), atol=1e-6)


def test_median_scaled_abs_rel_matches_numpy():
    rng = np.random.default_rng(0)
    true = rng.uniform(1.0, 10.0, (3, 8, 8)).astype(np.float32)
    true[0, :2] = np.inf  # sky: not counted
    pred = (true * rng.uniform(0.8, 1.2, true.shape)).astype(np.float32) / 3.0
    abs_rel, scale = losses.median_scaled_abs_rel(jnp.asarray(pred), jnp.asarray(true))
    for b in range(3):
        valid = np.isfinite(true[b])
        s = np.median(true[b][valid]) / np.median(pred[b][valid])
        capped = np.minimum(s * pred[b][valid], true[b][valid].max())
        ref = np.mean(np.abs(capped - true[b][valid]) / true[b][valid])
        assert float(scale[b]) == pytest.approx(s, rel=1e-5)
        assert float(abs_rel[b]) == pytest.approx(ref, rel=1e-4)
    # A prediction right up to scale scores 0; an image with nothing valid is NaN.
    exact, _ = losses.median_scaled_abs_rel(jnp.asarray(true[1:2] * 5.0), jnp.asarray(true[1:2]))
    assert float(exact[0]) == pytest.approx(0.0, abs=1e-6)
    empty, _ = losses.median_scaled_abs_rel(jnp.ones((1, 4, 4)), jnp.full((1, 4, 4), jnp.inf))
    assert np.isnan(float(empty[0]))
    # A ray ending at infinity (the far field) where the truth is the farthest ground
    # point costs 0 under the cap; where the truth is a quarter of that, (d_max − d) / d = 3.
    true_row = np.array([[[2.0, 2.0, 4.0, 4.0, 4.0, 8.0]]], np.float32)
    pred_row = np.array([[[2.0, 2.0, 4.0, 4.0, 4.0, np.inf]]], np.float32)
    far, s = losses.median_scaled_abs_rel(jnp.asarray(pred_row), jnp.asarray(true_row))
    assert float(s[0]) == pytest.approx(1.0) and float(far[0]) == pytest.approx(0.0, abs=1e-6)
    pred_row[0, 0, 1] = np.inf
    far, _ = losses.median_scaled_abs_rel(jnp.asarray(pred_row), jnp.asarray(true_row))
    assert float(far[0]) == pytest.approx((8.0 - 2.0) / 2.0 / 6.0, rel=1e-5)


def test_disparity_from_depth_maps_sky_and_bad_depth_to_zero():
    depth = jnp.array([[2.0, jnp.inf, 0.0, -1.0, jnp.nan]])
    np.testing.assert_array_equal(disparity_from_depth(depth), [[0.5, 0.0, 0.0, 0.0, 0.0]])


def _moved(points, source, target, scale):
    """World points pushed through rebase_camera's similarity (as camera centres)."""
    poses = np.broadcast_to(np.eye(4), points.shape[:-1] + (4, 4)).copy()
    poses[..., :3, 3] = points
    return np.asarray(geo.rebase_camera(poses, source, target, scale))[..., :3, 3]


def test_eval_renders_the_datasets_novel_cameras_in_the_model_frame():
    """The dataset's held-out camera, moved into the model frame, sees the same image."""
    from vq3d_jax.datasets import cameras_np, scenes

    task = get_task(_config())
    rng = np.random.default_rng(3)
    scene = scenes.sample_scene(rng)
    c2w_data = scenes.canonical_camera(scene, rng)
    novel = cameras_np.orbit(c2w_data, scene.center, np.deg2rad(20.0), np.deg2rad(-10.0))
    scale = 0.5  # model depth = half the data depth
    cam = geo.rebase_camera(novel, c2w_data, task.cam_to_world, scale)
    points = scene.center + rng.uniform(-1.5, 1.5, (20, 3))
    uv_data, z_data = geo.project(points, task.intrinsics, novel)
    uv_model, z_model = geo.project(
        _moved(points, c2w_data, task.cam_to_world, scale), task.intrinsics, cam
    )
    np.testing.assert_allclose(uv_model, uv_data, atol=1e-3)
    np.testing.assert_allclose(z_model, scale * np.asarray(z_data), rtol=1e-5)
    # The data camera looks at the scene centre: it lands on the model's optical axis,
    # at the scaled distance, where the training orbits put their pivot.
    pivot = _moved(scene.center, c2w_data, task.cam_to_world, scale)
    distance = np.linalg.norm(scene.center - c2w_data[:3, 3])
    canonical = np.asarray(task.cam_to_world)
    np.testing.assert_allclose(pivot, canonical[:3, 3] + scale * distance * canonical[:3, 2],
                               atol=1e-4)


def test_yawed_views_keep_the_horizon_level():
    """The canonical camera looks down at the scene like the dataset's (18°): yawing it
    about the world's up axis, as training's novel views and the orbits do, moves the
    horizon neither up nor into a slant; the camera's x axis stays horizontal."""
    task = get_task(_config())
    r = task.config.render
    assert r.camera_elevation_deg == 18.0
    yaw = np.deg2rad(np.array([-20.0, 0.0, 20.0]))
    cams = np.asarray(task.orbit_cameras(jnp.full((3, 8, 8), 1.0 / 6.0), jnp.asarray(yaw),
                                         jnp.zeros(3)))
    focal, centre = float(task.intrinsics[0, 0]), r.resolution / 2
    horizon_row = centre - focal * np.tan(np.deg2rad(r.camera_elevation_deg))
    for cam in cams:
        assert cam[:3, 0] @ np.asarray(geo.WORLD_UP) == pytest.approx(0.0, abs=1e-6)
        # Points far away at the camera's height, 15° either side of its heading.
        heading = np.arctan2(cam[0, 2], cam[2, 2])
        angles = heading + np.deg2rad(np.array([-15.0, 15.0]))
        far = cam[:3, 3] + 1e5 * np.stack([np.sin(angles), 0 * angles, np.cos(angles)], -1)
        uv, _ = geo.project(far, task.intrinsics, cam)
        np.testing.assert_allclose(np.asarray(uv)[:, 1], horizon_row, atol=1e-2)
        assert abs(float(uv[0, 0] - uv[1, 0])) > r.resolution / 4  # both in view, apart
    # The scenes' up axis, carried into the model frame with their cameras, is the model's
    # up to within the dataset's ±3° elevation jitter (a level canonical camera: 18° off).
    from vq3d_jax.datasets import cameras_np, scenes

    rng = np.random.default_rng(0)
    for _ in range(8):
        data_cam = scenes.canonical_camera(scenes.sample_scene(rng), rng)
        to_model = np.asarray(task.cam_to_world)[:3, :3] @ data_cam[:3, :3].T
        cosine = (to_model @ cameras_np.WORLD_UP) @ np.asarray(geo.WORLD_UP)
        assert np.degrees(np.arccos(min(cosine, 1.0))) <= 3.01


@pytest.mark.parametrize("preset", vq3d_stage1.PRESETS)
def test_every_preset_builds_its_model(preset):
    """Shapes only (eval_shape): the token grid divides the planes, heads line up."""
    import jax

    task = get_task(vq3d_stage1.get_config(preset))
    state = jax.eval_shape(task.init_state, jax.random.key(0))
    planes = jax.eval_shape(
        task.planes, state.params["generator"],
        jax.ShapeDtypeStruct((1, task.image_size, task.image_size, 3), jnp.float32),
    )[0]
    r = task.config.model.plane_resolution
    assert planes.shape == (1, 3, r, r, task.config.model.plane_channels)


def test_a_ray_subset_renders_what_the_whole_view_shows_at_those_pixels():
    """`render.train_rays`: rendering N chosen pixels gives the full render's values there
    (deterministic sampling), and the chosen pixels of an image are distinct."""
    import jax

    task = get_task(_config(**{"render.train_rays": 40}))
    params = jax.jit(task.init_generator)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
    pixels = task.train_pixels(jax.random.split(jax.random.key(3), 2))
    assert pixels.shape == (2, 40)
    assert all(len(np.unique(np.asarray(p))) == 40 for p in pixels)

    @jax.jit
    def full_and_subset(params, images, pixels):
        planes, _ = task.planes(params, images)
        cameras = task._canonical(2)
        kwargs = dict(randomized=False)
        return (task.render(params["nerf"], planes, cameras, fixed_keys(2), **kwargs),
                task.render(params["nerf"], planes, cameras, fixed_keys(2), pixels=pixels,
                            **kwargs))

    full, subset = full_and_subset(params, images, pixels)
    for key in ("color", "disparity", "weights"):
        flat = np.asarray(full[key]).reshape((2, -1) + full[key].shape[3:])
        expected = np.take_along_axis(
            flat, np.asarray(pixels).reshape(pixels.shape + (1,) * (flat.ndim - 2)), axis=1)
        np.testing.assert_allclose(subset[key], expected, rtol=1e-5, atol=1e-6)
        # The helper that picks the training targets at those pixels picks the same ones.
        np.testing.assert_array_equal(take_pixels(full[key], pixels), expected)


def test_multiview_consistency_of_a_view_with_itself_is_exact(monkeypatch):
    """The figure warps the yawed render into the canonical one: at 0° of yaw the two are
    one camera and every pixel is seen, so only float noise is left; at the figure's 20°
    an untrained scene is no longer consistent."""
    import jax

    task = get_task(_config())
    params = jax.jit(task.init_generator)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
    monkeypatch.setattr(task, "inference_generator", lambda state: params)

    @jax.jit
    def figures(params, images):
        planes, _ = task.planes(params, images)
        maps, _ = task._canonical_view(params, planes)
        return (task._multiview_psnr(None, planes, maps, yaw_deg=0.0),
                task._multiview_psnr(None, planes, maps, yaw_deg=20.0))

    same, turned = (np.asarray(f) for f in figures(params, images))
    # The floor is float noise: under jit two renders of one camera differ where an ulp
    # moves an importance sample to another bin (~1e-3), hence 50 dB and not ∞.
    assert np.all(same > 50.0), same
    assert np.all(np.isfinite(turned)) and np.all(turned < same - 10.0), (same, turned)
