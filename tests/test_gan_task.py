"""The 3D GAN task (task='gan', GMPI/GMNR head): poses, the sharded step, render mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override, steps_per_layout, with_a_wrong_row
from float_bounds import assert_close_up_to_rounding, assert_same_steps

from configs import gmnr
from vq3d_jax.datasets import cameras_np
from vq3d_jax.geometry import pose_sampling
from vq3d_jax.tasks import get_task
from vq3d_jax.tasks.gan_multiplane import CONDITION_DIM
from vq3d_jax.tasks.gan_task import GANTask, yaw_pitch_of
from vq3d_jax.train import runtime

SMALL = {
    "data.image_size": 8, "model.resolution": 8, "model.num_planes": 4,
    "model.num_planes_eval": 6, "model.channel_base": 256, "model.channel_max": 16,
    "model.z_dim": 16, "model.w_dim": 16, "model.disc_channel_base": 128,
    "model.disc_channel_max": 16, "global_batch_size": 8, "loss.views_per_z": 2,
    # GMPI's shading augmentation at full strength from step 0.
    "loss.shading.enabled": True, "loss.shading.start_step": -1,
    "loss.shading.ramp_steps": 1,
}


def _rig_camera(yaw_deg, elevation_deg, distance=6.0):
    """The synthetic scenes' camera construction (datasets/scenes.py), at the origin."""
    yaw, elev = np.deg2rad(yaw_deg), np.deg2rad(elevation_deg)
    eye = distance * np.array([np.sin(yaw) * np.cos(elev), -np.sin(elev),
                               -np.cos(yaw) * np.cos(elev)])
    return cameras_np.look_at(eye, np.zeros(3))


def test_dataset_camera_angles_and_pose_conditions_agree_with_the_pose_sphere():
    poses = pose_sampling.PoseDistribution(0.1, 0.03, 2.0, radius=6.0, center_depth=6.0)
    for yaw, elevation in ((0.0, 18.0), (8.0, 18.0), (-6.0, 21.0)):
        angles = np.asarray(yaw_pitch_of(_rig_camera(yaw, elevation), 18.0))
        np.testing.assert_allclose(angles, [np.deg2rad(yaw), np.deg2rad(18.0 - elevation)],
                                   atol=1e-6)
    # A yawed rig camera at the mean elevation is the pose sphere's camera at that yaw,
    # seen from the mean camera (both about their centres, up to the 18° tilt: at 0 tilt
    # exactly).
    level = _rig_camera(7.0, 0.0)
    sphere = np.asarray(pose_sampling.cameras_at(np.asarray(yaw_pitch_of(level, 0.0)), poses))
    np.testing.assert_allclose(sphere[:3, :3], level[:3, :3], atol=1e-5)
    condition = np.asarray(GANTask(gmnr.get_config("tiny")).training.condition(
        pose_sampling.cameras_at(jnp.zeros(2), poses)))
    assert condition.shape == (CONDITION_DIM,)
    np.testing.assert_allclose(condition.reshape(4, 4), np.linalg.inv(
        np.asarray(poses.reference_camera())), atol=1e-6)


def test_sharded_and_accumulated_gan_step_equals_the_plain_step():
    """One GMNR step (GMPI's head with α-guided view-dependent colour and the mirrored
    view's consistency loss; shading on, 2 views per z, a real view drawn per scene, R1
    due at step 0) on data=2 × fsdp=2 simulated devices, its G and D gradients
    accumulated over 2 micro-batches of 4, equals the step on one device over the batch
    of 8 up to float rounding (tests/float_bounds.py); fed one wrong real image, its D's
    gradients do not."""
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        "cam_to_world": np.stack([_rig_camera(y, 18.0 + p) for y, p in
                                  rng.uniform(-10, 10, (8, 2)) * [1.0, 0.3]]).astype(np.float32),
        # The tiny preset draws one of each scene's 1 + 2 views (data.train_on_novel_views).
        "novel_image": rng.integers(0, 256, (8, 2, 8, 8, 3), dtype=np.uint8),
        "novel_cam_to_world": np.stack([[_rig_camera(y, 18.0), _rig_camera(-y, 28.0)]
                                        for y in rng.uniform(10, 20, 8)]).astype(np.float32),
    }
    (state_1, metrics_1), (state_8, metrics_8), (wrong_8, _) = steps_per_layout(
        lambda: override(gmnr.get_config("tiny"), SMALL),
        [(jax.devices()[:1], dict(data=1, fsdp=1), 1),
         (jax.devices()[:4], dict(data=2, fsdp=2), 2)],
        batch, corrupted=with_a_wrong_row(batch))
    assert_close_up_to_rounding(metrics_8, metrics_1, keys=(
        "loss/g", "loss/d", "loss/r1", "loss/view_consistency"))
    assert float(metrics_1["loss/r1"]) > 0.0 and float(metrics_1["loss/view_consistency"]) > 0
    # The noise inputs' strengths start at 0 but their gradients are the noise's
    # correlation with the loss's: drawn per micro-batch, they differ.
    config = override(gmnr.get_config("tiny"), SMALL)
    assert_same_steps(state_8, state_1, config, steps=1, skip=("noise_strength",))
    with pytest.raises(AssertionError, match="discriminator.*beyond float rounding"):
        assert_same_steps(wrong_8, state_1, config, steps=1, skip=("noise_strength",))


def test_masked_psnr_closed_form():
    from vq3d_jax import losses

    pred = np.zeros((2, 2, 2, 3), np.float32)
    target = pred.copy()
    target[0, 0, 0] = 0.5  # one channel-triple off by 0.5, inside the mask
    target[0, 1, 1] = 9.0  # masked out
    mask = np.array([[[True, True], [True, False]], [[False] * 2] * 2])
    got = np.asarray(losses.masked_psnr(pred, target, mask))
    np.testing.assert_allclose(got[0], 10 * np.log10(4.0 / (3 * 0.25 / 9)), rtol=1e-5)
    assert np.isnan(got[1])  # nothing visible


def test_render_mode_writes_each_seed_with_its_depth_beside_the_orbit(tmp_path):
    from vq3d_jax import render_mode

    config = override(gmnr.get_config("tiny"), {**SMALL, "sample.render_frames": 5,
                                                 "eval.global_batch_size": 2})
    rt = runtime.build_runtime(get_task(config), config, devices=jax.devices()[:1])
    state = runtime.init_state(rt)
    written = render_mode.render_seeds(rt, state, [3, 0, 7], str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"seed_{n:04d}_{kind}" for n in (0, 3, 7)
        for kind in ("image.png", "depth.png", "orbit.gif"))
    assert len(written) == 9
    from PIL import Image

    with Image.open(tmp_path / "seed_0003_orbit.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (16, 8)  # the frame ‖ its depth
    # A seed is its sample: the same picture alone or in another batch.
    render_mode.render_seeds(rt, state, [3], str(tmp_path / "again"))
    for name in ("seed_0003_image.png", "seed_0003_depth.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / name)),
                                      np.asarray(Image.open(tmp_path / "again" / name)))
