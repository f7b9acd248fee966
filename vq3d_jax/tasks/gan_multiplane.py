"""The multiplane head's training pieces for the GAN task (tasks/gan_task.py): GMPI
(arXiv 2207.10642) and GMNR (arXiv 2304.01172).

- The discriminator: StyleGAN2's residual D conditioned on the flattened world-to-camera
  matrix of the view's camera on the pose sphere (GMPI §3.3); the generator is not
  conditioned on the camera.
- `generator_pass`: each z's MPI rendered at its views, with GMPI's shading augmentation
  (`loss.shading`: a light per sample) and, for GMNR (`loss.view_consistency` > 0), a
  second render at the first view's yaw mirrored about the mean, warped into the first
  view through the first view's depth: the weighted SSIM + L1 view-consistency loss
  (arXiv 2304.01172 §3.3).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vq3d_jax import geometry as geo
from vq3d_jax import losses
from vq3d_jax.geometry import pose_sampling, shading
from vq3d_jax.models.discriminator import ResidualDiscriminator
from vq3d_jax.models.gmpi import GMPIHead
from vq3d_jax.tasks import gan
from vq3d_jax.tasks.common import DISCRIMINATOR, make_optimizer
from vq3d_jax.train.task import CapabilityError

CONDITION_DIM = 16  # the flattened world-to-camera matrix


def warp_view(rendered, cameras, intrinsics, source: int, target: int):
    """View `source` of each render ({'image', 'depth', 'opacity'} [B, V, ...]) seen from
    view `target`'s camera through the target's rendered depth (`geometry.backward_warp`:
    intrinsics and perspective divide) → (image [B, S, S, 3], visible [B, S, S])."""
    depth = rendered["depth"][:, target] / jnp.maximum(rendered["opacity"][:, target], 1e-6)

    def warp(image, target_depth, source_c2w, target_c2w):
        return geo.backward_warp(image, intrinsics, source_c2w, target_depth, intrinsics,
                                 target_c2w)

    return jax.vmap(warp)(rendered["image"][:, source], depth, cameras[:, source],
                          cameras[:, target])


class MultiplaneTraining:
    """GMPI/GMNR's generator pass, discriminator and pose conditions (module docstring)."""

    def __init__(self, config, poses: pose_sampling.PoseDistribution):
        m, loss = config.model, config.loss
        self.config, self.poses = config, poses
        self.head = GMPIHead(m, poses, config.camera.fov_deg)
        network = ResidualDiscriminator(
            resolution=self.head.size, channel_base=m.disc_channel_base,
            channel_max=m.disc_channel_max, mbstd_group_size=m.disc_mbstd_group_size,
            condition_dim=CONDITION_DIM, cmap_dim=m.disc_cmap_dim, dtype=jnp.dtype(m.dtype))
        tx, _ = make_optimizer(config.optim.discriminator, config.total_steps)
        self.discriminators = (gan.Discriminator(DISCRIMINATOR, network, tx, loss.r1_gamma,
                                                 int(loss.r1_every)),)
        self.consistency = float(loss.get("view_consistency", 0.0))

    def discriminator_inputs(self, name: str):
        """Example inputs of discriminator `name` (for init): images and a condition."""
        s = self.head.size
        return jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, CONDITION_DIM), jnp.float32)

    def condition(self, cam_to_world: jax.Array) -> jax.Array:
        """Cameras on the pose sphere [..., 4, 4] → the D's condition [..., 16]."""
        return jnp.linalg.inv(cam_to_world).reshape(cam_to_world.shape[:-2] + (CONDITION_DIM,))

    def generator_condition(self, cam_to_world, keys, step):
        return None  # GMPI's mapping is not camera-conditioned

    def inference_condition(self, batch: int):
        return None

    def light(self, keys: jax.Array, step) -> shading.Light | None:
        """GMPI's shading augmentation (`loss.shading`): a light per sample (its key in
        `keys` [B]) on the camera sphere, yaw N(0, σ_h), pitch N(μ_v, σ_v) above the
        object (2σ truncation), shining at its centre, ramped in linearly from
        `start_step` over `ramp_steps`."""
        cfg = self.config.loss.get("shading")
        if cfg is None or not cfg.enabled:
            return None
        lights = dataclasses.replace(self.poses, yaw_std=cfg.yaw_std, pitch_std=cfg.pitch_std,
                                     yaw_mean=0.0, pitch_mean=-cfg.elevation, truncation=2.0)
        position = jax.vmap(
            lambda k: pose_sampling.sample_cameras(k, 1, lights)[0][0, :3, 3])(keys)
        direction, _ = geo.normalize_directions(self.poses.center() - position)
        strength = jnp.clip((step - cfg.start_step) / max(cfg.ramp_steps, 1), 0.0, 1.0)
        return shading.Light(direction, float(cfg.ka), float(cfg.kd), strength)

    def generator_pass(self, g_params, ws, cameras, yaw_pitch, noise_rng, keys, step):
        """ws [B, n, w], cameras [B, V, 4, 4] (their angles `yaw_pitch` [B, V, 2]) →
        (the D's inputs of every view [B, V, S, S, 3], {loss name: weighted term},
        {name: inputs of another discriminator}: none here)."""
        light_keys, pixel_keys = keys
        views = cameras.shape[1]
        if self.consistency > 0:
            # GMNR: a second render of each z at its first view's yaw mirrored about the
            # mean yaw, for the view-consistency loss.
            mirrored = yaw_pitch[:, :1] * jnp.asarray([-1.0, 1.0]) + jnp.asarray(
                [2.0 * self.poses.yaw_mean, 0.0])
            cameras = jnp.concatenate([cameras, pose_sampling.cameras_at(mirrored,
                                                                         self.poses)], 1)
        rendered = self.head.render(g_params, ws, cameras, noise_rng,
                                    light=self.light(light_keys, step),
                                    sampling_keys=pixel_keys)
        terms = {}
        if self.consistency > 0:
            warped, visible = warp_view(rendered, cameras, self.head.intrinsics, source=-1,
                                        target=0)
            loss = losses.view_consistency_loss(
                (rendered["image"][:, 0] + 1.0) / 2.0, (warped + 1.0) / 2.0, visible)
            terms["loss/view_consistency"] = (loss, self.consistency)
        return rendered["image"][:, :views], terms, {}

    def real_inputs(self, reals: jax.Array, keys, step) -> dict:
        return {DISCRIMINATOR: reals}

    def mesh_bounds(self):
        raise CapabilityError(
            f"--mesh: model.head={self.config.model.head!r} (GMPI/GMNR) has no density field "
            "to mesh: its samples are RGBα planes at fixed depths, not a volume; the tri-plane "
            "heads (configs/eg3d.py, configs/mimic3d.py) have one.")

    def generate(self, g_params, ws, cameras, noise_rng, step=None) -> dict:
        """Views of ψ-truncated ws at cameras [B, V] with the eval plane count and every
        pixel's view-dependent colour: {'image', 'depth', 'opacity'}."""
        return self.head.render(g_params, ws, cameras, noise_rng,
                                num_planes=int(self.config.model.num_planes_eval),
                                sample_fraction=1.0)
