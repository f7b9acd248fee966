"""A 3D-aware GAN trained on single views with their cameras (`task = "gan"`), generic
over its head (GMPI now; the tri-plane GAN next): StyleGAN2-ADA's training recipe
(Karras et al. 2020) with GMPI's pose-conditioned discriminator (arXiv 2207.10642 §3.3).

Per step, one generator then one discriminator update (the GAN kit, tasks/gan.py):
- G: z → ws (style mixing with a second z) → the head renders each sample at
  `loss.views_per_z` cameras drawn from the pose distribution; the D scores each view
  under its pose and G takes the non-saturating loss of the worst-scored view of each z
  (GMPI's "update G on the worst of N views"; N = 1 is plain).
- D: real images under their dataset poses against the rendered fakes under theirs;
  lazy R1 on the reals. Poses enter as the flattened world-to-camera matrix of the camera
  at that (yaw, pitch) on the pose sphere, reals' angles read off their cam-to-world.
- GMNR (`loss.view_consistency` > 0): each z is also rendered at its first view's yaw
  mirrored about the mean, warped into the first view through the first view's depth,
  and G adds the weighted SSIM + L1 view-consistency loss (arXiv 2304.01172 §3.3).
- model_state: the generator EMA (StyleGAN2 §B) and the tracked average w (truncation).

Eval: the multi-view consistency of samples (`eval_step`), FID/KID and SWD of
`fid_images` (one sample per eval image at a random pose); `sample` writes ψ-truncated
images over their depth maps and an orbit per sample.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vq3d_jax import geometry as geo
from vq3d_jax import losses
from vq3d_jax.geometry import pose_sampling, shading
from vq3d_jax.models import stylegan2
from vq3d_jax.models.discriminator import ResidualDiscriminator
from vq3d_jax.models.gmpi import GMPIHead
from vq3d_jax.tasks import gan
from vq3d_jax.tasks.common import (
    DISCRIMINATOR,
    GENERATOR,
    image_grid,
    images_to_float,
    images_to_uint8,
    make_optimizer,
)
from vq3d_jax.train import accumulation
from vq3d_jax.train.state import TrainState
from vq3d_jax.visualize import colorize_depth

HEADS = {"gmpi": GMPIHead}
EVAL_POSES = ("sampled", "canonical")  # FID/KID/SWD images: novel views or the mean pose
W_AVERAGE = "w_average"


def pose_condition(yaw_pitch: jax.Array, poses: pose_sampling.PoseDistribution) -> jax.Array:
    """(yaw, pitch) [..., 2] → the flattened world-to-camera [..., 16] the D is given."""
    c2w = pose_sampling.cameras_at(yaw_pitch, poses)
    return jnp.linalg.inv(c2w).reshape(yaw_pitch.shape[:-1] + (16,))


def yaw_pitch_of(cam_to_world: jax.Array, elevation_deg: float) -> jax.Array:
    """Angles of dataset cameras looking at the object centre [..., 4, 4] → [..., 2]:
    yaw about world up (+ to the camera's left side of the object, as `cameras.orbit`),
    pitch relative to the dataset's mean elevation (+ = camera lower, nose up)."""
    forward = cam_to_world[..., :3, 2]
    yaw = jnp.arctan2(-forward[..., 0], forward[..., 2])
    elevation = jnp.arcsin(jnp.clip(forward[..., 1], -1.0, 1.0))
    return jnp.stack([yaw, np.deg2rad(elevation_deg) - elevation], -1)


class GANTask:
    train_keys = ("image", "cam_to_world")
    eval_keys = ("image", "index")

    def __init__(self, config):
        self.config = config
        m, cam = config.model, config.camera
        if m.head not in HEADS:
            raise ValueError(f"model.head={m.head!r}: one of {sorted(HEADS)}.")
        self.poses = pose_sampling.PoseDistribution(
            yaw_std=cam.yaw_std, pitch_std=cam.pitch_std, truncation=cam.truncation,
            radius=cam.radius, center_depth=cam.radius)
        self.head = HEADS[m.head](m, self.poses, cam.fov_deg)
        self.image_size = int(config.data.image_size)
        if self.image_size != self.head.size:
            raise ValueError(f"data.image_size={self.image_size} but the generator renders "
                             f"{self.head.size}² (model.resolution).")
        network = ResidualDiscriminator(
            resolution=self.image_size, channel_base=m.disc_channel_base,
            channel_max=m.disc_channel_max, mbstd_group_size=m.disc_mbstd_group_size,
            condition_dim=16, cmap_dim=m.disc_cmap_dim, dtype=jnp.dtype(m.dtype))
        loss, o = config.loss, config.optim
        self.generator_tx, self.generator_lr = make_optimizer(o.generator, config.total_steps)
        disc_tx, _ = make_optimizer(o.discriminator, config.total_steps)
        self.discriminator = gan.Discriminator(DISCRIMINATOR, network, disc_tx, loss.r1_gamma,
                                               int(loss.r1_every))
        self.num_sample_images = int(config.sample.num_images)
        self.eval_pose = config.eval.get("pose", "sampled")
        if self.eval_pose not in EVAL_POSES:
            raise ValueError(f"eval.pose={self.eval_pose!r}: one of {EVAL_POSES}.")
        self.fid_images_are = f"samples (ψ = 1) at {self.eval_pose} poses"
        # The training scenes' other views as more real images, one drawn per example.
        self.extra_views = bool(config.data.get("train_on_novel_views", False))
        if self.extra_views:
            self.train_keys = GANTask.train_keys + ("novel_image", "novel_cam_to_world")

    # -- state -------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> TrainState:
        g_rng, d_rng, step_rng = jax.random.split(rng, 3)
        images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        params = {
            GENERATOR: self.head.init(g_rng),
            DISCRIMINATOR: self.discriminator.network.init(
                d_rng, images, jnp.zeros((1, 16), jnp.float32))["params"],
        }
        opt_state = {GENERATOR: self.generator_tx.init(params[GENERATOR]),
                     DISCRIMINATOR: self.discriminator.tx.init(params[DISCRIMINATOR])}
        model_state = {gan.GENERATOR_EMA: params[GENERATOR],
                       W_AVERAGE: jnp.zeros((self.config.model.w_dim,), jnp.float32)}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                          rng=step_rng, model_state=model_state)

    def inference_generator(self, state):
        return gan.inference_generator(state)

    # -- training ----------------------------------------------------------------------
    def styles(self, g_params, keys: jax.Array) -> jax.Array:
        """ws [B, n, w_dim] of fresh z, mixed with a second z's (StyleGAN §3.1); one key
        per sample `keys` [B]."""
        z_keys, other_keys, mix_keys = jax.vmap(lambda k: tuple(jax.random.split(k, 3)))(keys)
        draw = jax.vmap(lambda k: jax.random.normal(k, (self.head.z_dim,)))
        ws = self.head.mapping(g_params, draw(z_keys))
        p = self.config.loss.style_mixing
        if p > 0:
            other = self.head.mapping(g_params, draw(other_keys))
            ws = jax.vmap(lambda k, w, o: stylegan2.mix_styles(k, w[None], o[None], p)[0])(
                mix_keys, ws, other)
        return ws

    def real_views(self, batch, keys: jax.Array):
        """The real images [B, S, S, 3] in [−1, 1] and their cam-to-worlds: the batch's,
        or with `data.train_on_novel_views` one view drawn uniformly per example (its key
        in `keys` [B]) among its canonical and novel views."""
        images, cameras = batch["image"], batch["cam_to_world"]
        if self.extra_views:
            images = jnp.concatenate([images[:, None], batch["novel_image"]], 1)
            cameras = jnp.concatenate([cameras[:, None], batch["novel_cam_to_world"]], 1)
            pick = jax.vmap(lambda k: jax.random.randint(k, (), 0, images.shape[1]))(keys)
            images = jnp.take_along_axis(images, pick[:, None, None, None, None], 1)[:, 0]
            cameras = jnp.take_along_axis(cameras, pick[:, None, None, None], 1)[:, 0]
        return images_to_float(images), cameras

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

    def train_step(self, state: TrainState, batch):
        """One G and one D update from the same state; with `grad_accum_steps` = k the
        gradients of both (the D's R1 term too: a batch mean) are averaged over k
        micro-batches (train/accumulation.py). z, cameras, lights and real views are drawn
        per example, so they do not depend on k (GMNR's α-guided pixels too); the synthesis
        noise is drawn per micro-batch (the same distribution, other draws)."""
        rng = jax.random.fold_in(state.rng, state.step)
        example_rng, noise_rng = jax.random.split(rng)
        b = batch["image"].shape[0]
        inputs = (batch, accumulation.example_keys(example_rng, b), jnp.arange(b))
        grads, metrics, per_example = accumulation.mean_over_microbatches(
            lambda one: self._gradients(state, *one, noise_rng), inputs,
            accumulation.steps_of(self.config))
        g_params, g_opt = gan.apply_gradients(
            self.generator_tx, grads[GENERATOR], state.opt_state[GENERATOR],
            state.params[GENERATOR])
        # Both networks train from the first step (a GAN has no loss without its D), so
        # the D's update is not gated.
        d_params, d_opt = gan.apply_gradients(
            self.discriminator.tx, grads[DISCRIMINATOR], state.opt_state[DISCRIMINATOR],
            state.params[DISCRIMINATOR])
        ema = self.config.ema
        beta = gan.ema_decay(state.step, self.config.global_batch_size, ema.half_life_images,
                             ema.rampup)
        model_state = {
            gan.GENERATOR_EMA: gan.update_ema(state.model_state[gan.GENERATOR_EMA], g_params,
                                              beta),
            W_AVERAGE: stylegan2.track_w_average(state.model_state[W_AVERAGE],
                                                 per_example["w"],
                                                 self.config.model.w_average_beta),
        }
        new_state = state.replace(
            step=state.step + 1, params={GENERATOR: g_params, DISCRIMINATOR: d_params},
            opt_state={GENERATOR: g_opt, DISCRIMINATOR: d_opt}, model_state=model_state)
        return new_state, {
            **metrics,
            "train/learning_rate": self.generator_lr(state.step),
            "train/grad_norm": optax.tree.norm(grads[GENERATOR]),
        }

    def _gradients(self, state: TrainState, batch, keys, index, noise_rng):
        """G's and D's gradients on the examples `index` of the step's batch (`keys`: a
        PRNG key each) → (grads, metric means, {'w': each sample's first w})."""
        cfg = self.config.loss
        style_keys, camera_keys, view_keys, light_keys, pixel_keys = jax.vmap(
            lambda k: tuple(jax.random.split(k, 5)))(keys)
        noise_rng = jax.random.fold_in(noise_rng, index[0])  # one per micro-batch
        reals, real_cameras = self.real_views(batch, view_keys)
        b = reals.shape[0]
        views = int(cfg.views_per_z)
        d_params = state.params[DISCRIMINATOR]
        yaw_pitch = jax.vmap(lambda k: pose_sampling.sample_yaw_pitch(k, views, self.poses))(
            camera_keys)
        cameras = pose_sampling.cameras_at(yaw_pitch, self.poses)

        consistency = float(cfg.get("view_consistency", 0.0))
        if consistency > 0:
            # GMNR: a second render of each z at its first view's yaw mirrored about the
            # mean yaw, for the view-consistency loss.
            mirrored = yaw_pitch[:, :1] * jnp.asarray([-1.0, 1.0]) + jnp.asarray(
                [2.0 * self.poses.yaw_mean, 0.0])
            cameras = jnp.concatenate([cameras, pose_sampling.cameras_at(mirrored,
                                                                         self.poses)], 1)

        light = self.light(light_keys, state.step)

        def generator_loss(g_params):
            ws = self.styles(g_params, style_keys)
            rendered = self.head.render(g_params, ws, cameras, noise_rng, light=light,
                                        sampling_keys=pixel_keys)
            fakes = rendered["image"][:, :views]
            condition = pose_condition(yaw_pitch, self.poses)
            logits = self.discriminator.logits(
                d_params, fakes.reshape((b * views,) + fakes.shape[2:]),
                condition.reshape(b * views, 16)).reshape(b, views)
            # The view of each z the D finds least real.
            loss = losses.nonsaturating_generator_loss(jnp.min(logits, axis=1))
            extra = {}
            if consistency > 0:
                warped, visible = self.warp_view(rendered, cameras, source=-1, target=0)
                extra["loss/view_consistency"] = losses.view_consistency_loss(
                    (rendered["image"][:, 0] + 1.0) / 2.0, (warped + 1.0) / 2.0, visible)
                loss = loss + consistency * extra["loss/view_consistency"]
            first = (fakes[:, 0], condition[:, 0])
            return loss, (first, ws, extra)

        (g_loss, ((fakes, fake_condition), ws, extra)), g_grads = jax.value_and_grad(
            generator_loss, has_aux=True)(state.params[GENERATOR])
        real_condition = pose_condition(
            yaw_pitch_of(real_cameras, self.config.camera.elevation_deg), self.poses)
        d_grads, d_metrics = self.discriminator.gradients(
            d_params, reals, fakes, state.step, real_condition, fake_condition)
        return ({GENERATOR: g_grads, DISCRIMINATOR: d_grads},
                {"loss/g": g_loss, **extra, **d_metrics}, {"w": ws[:, 0]})

    # -- samples ----------------------------------------------------------------------
    def generate(self, state, index: jax.Array, cameras: jax.Array, psi: float) -> dict:
        """Sample i (its z and noise from fold_in(key(sample.seed), i)) at cameras [B, V]."""
        g = self.inference_generator(state)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            jax.random.key(int(self.config.sample.seed)), index)
        z = jax.vmap(lambda k: jax.random.normal(k, (self.head.z_dim,)))(keys)
        ws = stylegan2.truncate(self.head.mapping(g, z), state.model_state[W_AVERAGE], psi)
        return self.head.render(g, ws, cameras, jax.random.key(0),
                                num_planes=int(self.config.model.num_planes_eval),
                                sample_fraction=1.0)

    def eval_step(self, state, batch):
        """Multi-view consistency of each sample (one per eval index, ψ = 1): rendered at
        the mean pose and at the pose range's yaw edge, the first view warped into the
        second with the second's rendered depth (`geometry.backward_warp`: intrinsics
        and perspective divide) against the second render, as PSNR (dB) over the pixels
        both views see."""
        b = batch["index"].shape[0]
        edge = self.poses.truncation * self.poses.yaw_std
        angles = jnp.asarray([[0.0, 0.0], [edge, 0.0]], jnp.float32)
        cameras = jnp.broadcast_to(pose_sampling.cameras_at(angles, self.poses), (b, 2, 4, 4))
        out = self.generate(state, batch["index"], cameras, 1.0)
        warped, visible = self.warp_view(out, cameras, source=0, target=1)
        return {"multiview_psnr": losses.masked_psnr(warped, out["image"][:, 1], visible)}

    def warp_view(self, rendered, cameras, source: int, target: int):
        """View `source` of each render ({'image', 'depth', 'opacity'} [B, V, ...]) seen
        from view `target`'s camera through the target's rendered depth
        (`geometry.backward_warp`: intrinsics and perspective divide) → (image
        [B, S, S, 3], visible [B, S, S])."""
        depth = rendered["depth"][:, target] / jnp.maximum(rendered["opacity"][:, target],
                                                           1e-6)
        k = self.head.intrinsics

        def warp(image, target_depth, source_c2w, target_c2w):
            return geo.backward_warp(image, k, source_c2w, target_depth, k, target_c2w)

        return jax.vmap(warp)(rendered["image"][:, source], depth, cameras[:, source],
                              cameras[:, target])

    def fid_images(self, state, batch):
        """One sample per eval image, at a pose drawn from the training distribution
        (`eval.pose` 'sampled': novel views) or at the mean pose ('canonical')."""
        index = batch["index"]
        if self.eval_pose == "canonical":
            yaw_pitch = jnp.zeros((index.shape[0], 1, 2), jnp.float32)
        else:
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(1), index)
            yaw_pitch = jax.vmap(lambda k: pose_sampling.sample_yaw_pitch(k, 1, self.poses))(
                keys)
        cameras = pose_sampling.cameras_at(yaw_pitch, self.poses)
        return images_to_uint8(self.generate(state, index, cameras, 1.0)["image"][:, 0])

    def _orbit(self, state, index: jax.Array, frames: int, psi: float) -> dict:
        """Samples `index` at the mean pose, then `frames` views sweeping yaw over ± the
        pose range → uint8 {'image' [B, 1 + T, S, S, 3], 'depth' (colour-mapped, one
        scale for every view: the planes' disparity range) [B, 1 + T, S, S, 3]}."""
        yaw = self.poses.truncation * self.poses.yaw_std * np.sin(
            2.0 * np.pi * np.arange(frames) / frames)
        angles = jnp.asarray(np.stack([np.concatenate([[0.0], yaw]),
                                       np.zeros(frames + 1)], -1), jnp.float32)
        cameras = jnp.broadcast_to(pose_sampling.cameras_at(angles, self.poses),
                                   (index.shape[0], frames + 1, 4, 4))
        out = self.generate(state, index, cameras, psi)
        disparity = 1.0 / jnp.maximum(out["depth"], 1e-6)
        depth = colorize_depth(disparity, lo=1.0 / self.head.far, hi=1.0 / self.head.near)
        return {"image": images_to_uint8(out["image"]), "depth": depth}

    def sample(self, state, batch):
        """ψ-truncated samples at the mean pose over their depth maps; per sample an orbit
        GIF (yaw over ± the pose range) and a depth map."""
        s = self.config.sample
        n = min(self.num_sample_images, batch["index"].shape[0])
        out = self._orbit(state, batch["index"][:n], int(s.orbit_frames), float(s.psi))
        depth = out["depth"][:, 0]
        pictures = {"samples": image_grid([out["image"][:, 0], depth])}
        for i in range(n):
            pictures[f"orbit_{i:02d}"] = out["image"][i, 1:]
            pictures[f"depth_{i:02d}"] = depth[i]
        return pictures

    def render_samples(self, state, batch):
        """`--mode=render`: per seed (batch['index']) the ψ-truncated sample at the mean
        pose, its depth, and a `sample.render_frames` orbit with the depth beside it."""
        s = self.config.sample
        out = self._orbit(state, batch["index"], int(s.render_frames), float(s.psi))
        return {"image": out["image"][:, 0], "depth": out["depth"][:, 0],
                "orbit": jnp.concatenate([out["image"][:, 1:], out["depth"][:, 1:]], 3)}
