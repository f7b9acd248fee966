"""The tri-plane GAN head's training step (EG3D, Mimic3D stage 2): sharded and accumulated
equals plain, and Mimic3D with its 3D-aware convolutions off still trains."""

import jax
import numpy as np
import pytest
from conftest import override, steps_per_layout, with_a_wrong_row
from float_bounds import assert_close_up_to_rounding, assert_same_steps
from test_gan_task import _rig_camera

from configs import eg3d, mimic3d
from vq3d_jax.tasks import get_task
from vq3d_jax.train import runtime, sharding

# 16² images from 8² renders of 16² planes: every piece of the presets at the least size
# that keeps them (the SR's ×2, the 3D branch at two resolutions, a patch inside the image).
SMALL = {
    "data.image_size": 16, "model.resolution": 16, "model.z_dim": 16, "model.w_dim": 16,
    "model.channel_base": 256, "model.channel_max": 16, "model.disc_channel_base": 128,
    "model.disc_channel_max": 16, "model.disc_cmap_dim": 16, "global_batch_size": 8,
    "model.triplane.plane_resolution": 16, "model.triplane.plane_channels": 4,
    "model.triplane.decoder_hidden": 8, "model.triplane.decoder_features": 8,
    "model.triplane.render_resolution": 8, "model.triplane.sr_input_resolution": 8,
    "model.triplane.sr_channel_base": 128, "model.triplane.sr_channel_max": 16,
    "model.triplane.num_samples": 4, "model.triplane.num_importance": 4,
    "loss.density_reg_points": 16,
}
STAGE2 = {**SMALL, "model.triplane.conv3d_resolutions": (8, 16), "loss.patch_size": 8}
# The noise inputs' strengths start at 0 but their gradients are the noise's correlation
# with the loss: the noise is drawn per micro-batch, so these differ between layouts.
NOISE = ("noise_strength",)


def _batch(seed: int = 0, size: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8),
        "cam_to_world": np.stack([_rig_camera(y, 18.0 + p) for y, p in
                                  rng.uniform(-10, 10, (8, 2)) * [1.0, 0.3]]).astype(np.float32),
        # The tiny presets draw one of each scene's 1 + 2 views (data.train_on_novel_views).
        "novel_image": rng.integers(0, 256, (8, 2, size, size, 3), dtype=np.uint8),
        "novel_cam_to_world": np.stack([[_rig_camera(y, 18.0), _rig_camera(-y, 28.0)]
                                        for y in rng.uniform(10, 20, 8)]).astype(np.float32),
    }


def _sharded_equals_plain(make_config, keys):
    """One step on data=2 × fsdp=2 devices with 2 accumulated micro-batches against one
    device over the batch of 8 (tests/float_bounds.py); fed one wrong real image, the
    discriminator's gradients must differ beyond rounding."""
    batch = _batch()
    (state_1, metrics_1), (state_8, metrics_8), (wrong_8, _) = steps_per_layout(
        make_config,
        [(jax.devices()[:1], dict(data=1, fsdp=1), 1),
         (jax.devices()[:4], dict(data=2, fsdp=2), 2)],
        batch, corrupted=with_a_wrong_row(batch))
    assert_close_up_to_rounding(metrics_8, metrics_1, keys=keys)
    for key in keys:
        assert float(metrics_1[key]) > 0.0, key  # every term was due at step 0
    assert_same_steps(state_8, state_1, make_config(), steps=1, skip=NOISE)
    with pytest.raises(AssertionError, match="discriminator.*beyond float rounding"):
        assert_same_steps(wrong_8, state_1, make_config(), steps=1, skip=NOISE)


def test_sharded_and_accumulated_eg3d_step_equals_the_plain_step():
    """EG3D: the dual D's R1, the density regulariser, the fade-in blur (σ > 0 at step 0)
    and the pose-swapped generator condition all in the step."""
    _sharded_equals_plain(lambda: override(eg3d.get_config("tiny"), SMALL),
                          ("loss/g", "loss/d", "loss/r1", "loss/density_reg"))


def test_sharded_and_accumulated_mimic3d_stage2_step_equals_the_plain_step():
    """Mimic3D stage 2: the 3D branch, the detail planes, each view's patch rendered from
    them imitating the 2D super-resolution, and the patch D with its own R1."""
    _sharded_equals_plain(lambda: override(mimic3d.get_config("tiny_stage2"), STAGE2),
                          ("loss/g", "loss/d", "loss/r1", "loss/imitation", "loss/patch_d",
                           "loss/patch_r1"))


def test_mimic3d_stage2_without_3d_aware_convolutions_trains_a_step():
    """`conv3d_resolutions=()` (Mimic3D issue #2: turning them off broke its SR): the
    stage-2 generator has no 3D branch, its step's losses are finite, and every generator
    weight moves (each is reached by a loss: the detail planes' network by the imitation
    and the patch D's)."""
    config = override(mimic3d.get_config("tiny_stage2"),
                      {**STAGE2, "model.triplane.conv3d_resolutions": ()})
    rt = runtime.build_runtime(get_task(config), config, devices=jax.devices()[:1])
    state = runtime.init_state(rt)
    before = jax.device_get(state.params["generator"])  # the step donates `state`
    assert "aware_branch" not in before
    with rt.scope():
        new, metrics = runtime.compile_train_step(rt)(state, sharding.global_batch(_batch(),
                                                                                rt.mesh))
    metrics, after = jax.device_get((metrics, new.params["generator"]))
    for key in ("loss/g", "loss/imitation", "loss/patch_d", "loss/density_reg"):
        assert np.isfinite(metrics[key]) and metrics[key] > 0, key
    still = [jax.tree_util.keystr(path) for path, moved in jax.tree_util.tree_leaves_with_path(
        jax.tree.map(lambda a, b: bool(np.any(a != b)), after, before)) if not moved]
    assert not still, still
