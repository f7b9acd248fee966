"""A 3D-aware GAN trained on single views with their cameras (`task = "gan"`), generic
over its head: the multiplane head (GMPI, GMNR: tasks/gan_multiplane.py) or the tri-plane
head (EG3D, Mimic3D: tasks/gan_triplane.py). StyleGAN2-ADA's training recipe (Karras et
al. 2020) with a pose-conditioned discriminator.

Per step, one generator then one update of each discriminator (the GAN kit, tasks/gan.py):
- G: z (and, for the tri-plane head, the camera label) → ws (style mixing with a second
  z) → the head renders each sample at `loss.views_per_z` cameras drawn from the pose
  distribution; the main D scores each view under its camera and G takes the
  non-saturating loss of the worst-scored view of each z (GMPI's "update G on the worst
  of N views"; N = 1 is plain), plus the head's own terms (GMNR's view consistency,
  EG3D's density regulariser, Mimic3D's imitation and patch adversarial loss).
- Each D: real images (as the head shows them to it) under their dataset poses, placed on
  the pose sphere, against the first view of each fake; lazy R1 on the reals.
- model_state: the generator EMA (StyleGAN2 §B) and the tracked average w (truncation).

Eval: the multi-view consistency of samples (`eval_step`), FID/KID and SWD of
`fid_images` (one sample per eval image at a random pose); `sample` writes ψ-truncated
images over their depth maps and an orbit per sample; render mode adds, for a head with a
density field (tri-plane), each seed's σ and colour for its mesh (`sample_density`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vq3d_jax import losses
from vq3d_jax.geometry import pose_sampling
from vq3d_jax.models import stylegan2
from vq3d_jax.tasks import gan
from vq3d_jax.tasks.common import (
    GENERATOR,
    image_grid,
    images_to_float,
    images_to_uint8,
    make_optimizer,
    overlay_shared,
    run_config,
)
from vq3d_jax.tasks.gan_multiplane import MultiplaneTraining, warp_view
from vq3d_jax.tasks.gan_triplane import TriplaneTraining
from vq3d_jax.train import accumulation
from vq3d_jax.train.state import TrainState
from vq3d_jax.train.task import Pretrained
from vq3d_jax.visualize import colorize_depth

HEADS = {"gmpi": MultiplaneTraining, "triplane": TriplaneTraining}
EVAL_POSES = ("sampled", "canonical")  # FID/KID/SWD images: novel views or the mean pose
W_AVERAGE = "w_average"


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
        self.training = HEADS[m.head](config, self.poses)
        self.head = self.training.head
        self.discriminators = self.training.discriminators
        self.image_size = int(config.data.image_size)
        if self.image_size != self.head.size:
            raise ValueError(f"data.image_size={self.image_size} but the generator renders "
                             f"{self.head.size}² (model.resolution).")
        self.generator_tx, self.generator_lr = make_optimizer(config.optim.generator,
                                                              config.total_steps)
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
        params = {GENERATOR: self.head.init(g_rng)}
        for i, d in enumerate(self.discriminators):
            key = d_rng if i == 0 else jax.random.fold_in(d_rng, i)
            params[d.name] = d.network.init(
                key, *self.training.discriminator_inputs(d.name))["params"]
        opt_state = {GENERATOR: self.generator_tx.init(params[GENERATOR])}
        opt_state.update({d.name: d.tx.init(params[d.name]) for d in self.discriminators})
        model_state = {gan.GENERATOR_EMA: params[GENERATOR],
                       W_AVERAGE: jnp.zeros((self.config.model.w_dim,), jnp.float32)}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                          rng=step_rng, model_state=model_state)

    def inference_generator(self, state):
        return gan.inference_generator(state)

    def pretrained(self) -> list[Pretrained]:
        """With `stage1.workdir` (Mimic3D's stage 2): that run's networks, EMA and w̄ start
        this one wherever the two have the same sub-tree; the rest (the detail planes,
        the patch D) and the optimizer states start fresh, as the official code resumes."""
        workdir = self.config.get("stage1", {}).get("workdir", "")
        if not workdir:
            return []
        stage1 = GANTask(run_config(workdir, "stage1.workdir", "a stage-1 run of this model "
                                    "(e.g. --config=configs/mimic3d.py:tiny)"))

        def merge(state, other):
            return state.replace(params=overlay_shared(state.params, other.params),
                                 model_state=overlay_shared(state.model_state,
                                                            other.model_state))

        return [Pretrained(name="stage1", workdir=workdir, task=stage1, select=lambda s: s,
                           merge=merge)]

    # -- training ----------------------------------------------------------------------
    def styles(self, g_params, keys: jax.Array, condition=None) -> jax.Array:
        """ws [B, n, w_dim] of fresh z (and the camera labels `condition` [B, c], for a
        pose-conditioned head), mixed with a second z's (StyleGAN §3.1); one key per
        sample `keys` [B]."""
        z_keys, other_keys, mix_keys = jax.vmap(lambda k: tuple(jax.random.split(k, 3)))(keys)
        draw = jax.vmap(lambda k: jax.random.normal(k, (self.head.z_dim,)))
        ws = self.head.mapping(g_params, draw(z_keys), condition)
        p = self.config.loss.style_mixing
        if p > 0:
            other = self.head.mapping(g_params, draw(other_keys), condition)
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

    def train_step(self, state: TrainState, batch):
        """One G and one update of each D from the same state; with `grad_accum_steps` = k
        the gradients of all (the Ds' R1 terms too: batch means) are averaged over k
        micro-batches (train/accumulation.py). z, cameras, lights, windows and real views
        are drawn per example, so they do not depend on k (GMNR's α-guided pixels too);
        the synthesis noise is drawn per micro-batch (the same distribution, other draws)."""
        rng = jax.random.fold_in(state.rng, state.step)
        example_rng, noise_rng = jax.random.split(rng)
        b = batch["image"].shape[0]
        inputs = (batch, accumulation.example_keys(example_rng, b), jnp.arange(b))
        grads, metrics, per_example = accumulation.mean_over_microbatches(
            lambda one: self._gradients(state, *one, noise_rng), inputs,
            accumulation.steps_of(self.config))
        params, opt_state = {}, {}
        params[GENERATOR], opt_state[GENERATOR] = gan.apply_gradients(
            self.generator_tx, grads[GENERATOR], state.opt_state[GENERATOR],
            state.params[GENERATOR])
        # Every network trains from the first step (a GAN has no loss without its D), so
        # no D's update is gated.
        for d in self.discriminators:
            params[d.name], opt_state[d.name] = gan.apply_gradients(
                d.tx, grads[d.name], state.opt_state[d.name], state.params[d.name])
        ema = self.config.ema
        beta = gan.ema_decay(state.step, self.config.global_batch_size, ema.half_life_images,
                             ema.rampup)
        model_state = {
            gan.GENERATOR_EMA: gan.update_ema(state.model_state[gan.GENERATOR_EMA],
                                              params[GENERATOR], beta),
            W_AVERAGE: stylegan2.track_w_average(state.model_state[W_AVERAGE],
                                                 per_example["w"],
                                                 self.config.model.w_average_beta),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state)
        return new_state, {
            **metrics,
            "train/learning_rate": self.generator_lr(state.step),
            "train/grad_norm": optax.tree.norm(grads[GENERATOR]),
        }

    def _gradients(self, state: TrainState, batch, keys, index, noise_rng):
        """G's and each D's gradients on the examples `index` of the step's batch (`keys`:
        a PRNG key each) → (grads, metric means, {'w': each sample's first w})."""
        style_keys, camera_keys, view_keys, head_a, head_b = jax.vmap(
            lambda k: tuple(jax.random.split(k, 5)))(keys)
        head_keys = (head_a, head_b)
        noise_rng = jax.random.fold_in(noise_rng, index[0])  # one per micro-batch
        reals, real_cameras = self.real_views(batch, view_keys)
        b = reals.shape[0]
        views = int(self.config.loss.views_per_z)
        main, *others = self.discriminators
        d_params = {d.name: state.params[d.name] for d in self.discriminators}
        yaw_pitch = jax.vmap(lambda k: pose_sampling.sample_yaw_pitch(k, views, self.poses))(
            camera_keys)
        cameras = pose_sampling.cameras_at(yaw_pitch, self.poses)
        condition = self.training.condition(cameras)  # [B, V, c]

        def generator_loss(g_params):
            ws = self.styles(g_params, style_keys,
                             self.training.generator_condition(cameras[:, 0], head_keys,
                                                               state.step))
            fakes, terms, other_fakes = self.training.generator_pass(
                g_params, ws, cameras, yaw_pitch, noise_rng, head_keys, state.step)
            flat = jax.tree.map(lambda x: x.reshape((b * views,) + x.shape[2:]), fakes)
            logits = main.logits(d_params[main.name], flat,
                                 condition.reshape((b * views, -1))).reshape(b, views)
            # The view of each z the D finds least real.
            loss = losses.nonsaturating_generator_loss(jnp.min(logits, axis=1))
            metrics = {}
            for name, (term, weight) in terms.items():
                loss, metrics[name] = loss + weight * term, term
            for d in others:
                d_fakes, weight = other_fakes[d.name]
                adversarial = losses.nonsaturating_generator_loss(
                    d.logits(d_params[d.name], d_fakes))
                loss, metrics[f"loss/g_{d.prefix}adv"] = loss + weight * adversarial, \
                    adversarial
            first = jax.tree.map(lambda x: x[:, 0], fakes)
            return loss, (first, {d: f for d, (f, _) in other_fakes.items()}, ws, metrics)

        (g_loss, (fakes, other_fakes, ws, extra)), g_grads = jax.value_and_grad(
            generator_loss, has_aux=True)(state.params[GENERATOR])
        real_inputs = self.training.real_inputs(reals, head_keys, state.step)
        real_condition = self.training.condition(pose_sampling.cameras_at(
            yaw_pitch_of(real_cameras, self.config.camera.elevation_deg), self.poses))
        grads, metrics = {GENERATOR: g_grads}, {"loss/g": g_loss, **extra}
        grads[main.name], d_metrics = main.gradients(
            d_params[main.name], real_inputs[main.name], fakes, state.step, real_condition,
            condition[:, 0])
        metrics.update(d_metrics)
        for d in others:
            grads[d.name], d_metrics = d.gradients(
                d_params[d.name], real_inputs[d.name], other_fakes[d.name], state.step)
            metrics.update(d_metrics)
        return grads, metrics, {"w": ws[:, 0]}

    # -- samples ----------------------------------------------------------------------
    def _sample_inputs(self, state, index: jax.Array, psi: float):
        """Samples `index` [B] → (generator weights, ψ-truncated ws, noise key): sample i's
        z from fold_in(key(sample.seed), i); one noise key for all."""
        g = self.inference_generator(state)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            jax.random.key(int(self.config.sample.seed)), index)
        z = jax.vmap(lambda k: jax.random.normal(k, (self.head.z_dim,)))(keys)
        condition = self.training.inference_condition(index.shape[0])
        ws = stylegan2.truncate(self.head.mapping(g, z, condition),
                                state.model_state[W_AVERAGE], psi)
        return g, ws, jax.random.key(0)

    def generate(self, state, index: jax.Array, cameras: jax.Array, psi: float) -> dict:
        """Sample i (its z and noise from fold_in(key(sample.seed), i)) at cameras [B, V]."""
        g, ws, noise_rng = self._sample_inputs(state, index, psi)
        return self.training.generate(g, ws, cameras, noise_rng, state.step)

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
        warped, visible = warp_view(out, cameras, self.head.intrinsics, source=0, target=1)
        return {"multiview_psnr": losses.masked_psnr(warped, out["image"][:, 1], visible)}

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

    def sample_mesh_bounds(self):
        """The world box of the head's density field (`CapabilityError` for a head without
        one: the multiplane head)."""
        return self.training.mesh_bounds()

    def sample_density(self, state, batch):
        """σ and colour at world points batch['points'] [B, P, 3] of each seed's sample
        (batch['index']) as `render_samples` renders it (ψ = sample.psi)."""
        g, ws, noise_rng = self._sample_inputs(state, batch["index"],
                                               float(self.config.sample.psi))
        return self.training.sample_density(g, ws, batch["points"], noise_rng)
