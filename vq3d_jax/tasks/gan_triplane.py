"""The tri-plane head's training pieces for the GAN task (tasks/gan_task.py): EG3D
(arXiv 2112.07945) and Mimic3D (arXiv 2303.09036).

- The dual discriminator (EG3D §4.2): the super-resolved image and the raw neural render
  (upsampled) side by side, conditioned on EG3D's 25-float camera label mapped by an
  8-layer network; its R1 is taken w.r.t. both. Early in training the real images, the
  real raw images (the reals downsampled to the render size) and the fake images are
  blurred, not the fake raw images, as EG3D's loss (its fade-in: a Gaussian of σ = 10 px
  shrinking to 0 over `loss.blur_fade_images`).
- Generator pose conditioning (EG3D §4.1): the mapping sees the rendering camera's label,
  swapped for another camera's with probability p (`loss.pose_swap_probability`; fading
  in from 1 over `loss.pose_swap_fade_images`, as EG3D's).
- Density regularisation (EG3D's code, `loss.density_reg`): every `density_reg_every`
  steps, λ·E|σ_raw(x) − σ_raw(x + δ)| at random points x of the box, δ ~ N(0, ε²); in
  stage 2 of the coarse + detail field.
- Mimic3D stage 2 (`loss.imitation` > 0, detail planes): a random window of each first
  view, rendered at the image resolution straight from the coarse + detail planes,
  imitates the stop-gradient crop of the 2D super-resolution (LPIPS with
  `loss.lpips_weights`, else L1), and a patch discriminator (unconditional, lazy R1)
  scores it against random crops of the real images, weighted `loss.patch_adversarial`.
  Stage 2 is its own run, starting from a stage-1 run's weights (`stage1.workdir`,
  tasks/gan_task.py), as the official code resumes stage 1's networks.
- Render mode's meshes (`sample_density`): the σ and colour of the very planes `generate`
  renders, over the tri-plane box (`mesh_bounds`).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vq3d_jax.geometry import pose_sampling
from vq3d_jax.models import lpips
from vq3d_jax.models.discriminator import DualDiscriminator, ResidualDiscriminator
from vq3d_jax.models.eg3d import resize
from vq3d_jax.models.triplane_gan import LABEL_SIZE, TriplaneHead
from vq3d_jax.tasks import gan
from vq3d_jax.tasks.common import DISCRIMINATOR, make_optimizer

PATCH_DISCRIMINATOR = "patch_discriminator"


def gaussian_blur(images: jax.Array, sigma: jax.Array, max_sigma: float) -> jax.Array:
    """EG3D's fade-in blur of images [B, H, W, C] by σ pixels (a traced scalar ≤ `max_sigma`):
    separable taps 2^(−(x/σ)²) over |x| ≤ ⌊3σ⌋, normalised, zero padding. The kernel has
    a fixed 2⌊3·max_sigma⌋ + 1 taps (taps beyond ⌊3σ⌋ are 0), so every σ is one program."""
    radius = int(math.floor(3 * max_sigma))
    if radius == 0:
        return images
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    safe = jnp.maximum(sigma, 1e-8)
    taps = jnp.where(jnp.abs(x) <= jnp.floor(3 * sigma), jnp.exp2(-jnp.square(x / safe)), 0.0)
    taps = taps.at[radius].set(jnp.where(sigma > 0, taps[radius], 1.0))
    taps = taps / jnp.sum(taps)
    padded = jnp.pad(images.astype(jnp.float32),
                     ((0, 0), (radius, radius), (radius, radius), (0, 0)))
    h, w = images.shape[1], images.shape[2]
    rows = sum(taps[i] * padded[:, i:i + h] for i in range(2 * radius + 1))
    return sum(taps[i] * rows[:, :, i:i + w] for i in range(2 * radius + 1))


def random_windows(keys: jax.Array, size: int, patch: int) -> jax.Array:
    """Top-left corners [B, 2] (row, column) of a `patch`² window in a `size`² image, one
    per key, uniform over every position."""
    return jax.vmap(lambda k: jax.random.randint(k, (2,), 0, size - patch + 1))(keys)


def crop(images: jax.Array, corners: jax.Array, patch: int) -> jax.Array:
    """images [B, H, W, C], corners [B, 2] → [B, patch, patch, C]."""
    return jax.vmap(lambda im, c: jax.lax.dynamic_slice(
        im, (c[0], c[1], 0), (patch, patch, im.shape[-1])))(images, corners)


class TriplaneTraining:
    """EG3D/Mimic3D's generator pass, discriminators and conditions (module docstring)."""

    def __init__(self, config, poses: pose_sampling.PoseDistribution):
        m, loss = config.model, config.loss
        self.config, self.poses = config, poses
        self.head = TriplaneHead(m, poses, config.camera.fov_deg)
        self.batch = int(config.global_batch_size)
        dtype = jnp.dtype(m.dtype)
        main = DualDiscriminator(ResidualDiscriminator(
            resolution=self.head.size, channel_base=m.disc_channel_base,
            channel_max=m.disc_channel_max, mbstd_group_size=m.disc_mbstd_group_size,
            condition_dim=LABEL_SIZE, cmap_dim=m.disc_cmap_dim,
            condition_layers=int(m.disc_condition_layers), dtype=dtype))
        tx, _ = make_optimizer(config.optim.discriminator, config.total_steps)
        discriminators = [gan.Discriminator(DISCRIMINATOR, main, tx, loss.r1_gamma,
                                            int(loss.r1_every))]
        self.patch = int(loss.patch_size)
        self.imitation = float(loss.imitation)
        self.imitation_fn = None
        if self.imitation > 0:
            if not m.triplane.detail_planes:
                raise ValueError("loss.imitation > 0 (Mimic3D stage 2) renders patches from "
                                 "the detail planes: set model.triplane.detail_planes=True.")
            if loss.lpips_weights:
                self.imitation_fn = lpips.make_lpips_fn(loss.lpips_weights)
            elif loss.require_lpips:
                raise ValueError("Mimic3D's imitation loss is LPIPS: set "
                                 "--config.loss.lpips_weights (README: FID, KID and LPIPS).")
            else:
                logging.warning("loss.lpips_weights is empty: the imitation loss is L1 "
                                "(Mimic3D's is LPIPS; the tiny preset's choice).")
            patch_d = ResidualDiscriminator(
                resolution=self.patch, channel_base=m.disc_channel_base,
                channel_max=m.disc_channel_max, mbstd_group_size=m.disc_mbstd_group_size,
                dtype=dtype)
            discriminators.append(gan.Discriminator(PATCH_DISCRIMINATOR, patch_d, tx,
                                                    loss.patch_r1_gamma, int(loss.r1_every)))
        self.discriminators = tuple(discriminators)

    def discriminator_inputs(self, name: str):
        """Example inputs of discriminator `name` (for init)."""
        if name == PATCH_DISCRIMINATOR:
            return (jnp.zeros((1, self.patch, self.patch, 3), jnp.float32),)  # unconditional
        s, r = self.head.size, self.head.render_size
        images = (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, r, r, 3), jnp.float32))
        return images, jnp.zeros((1, LABEL_SIZE), jnp.float32)

    # -- conditions ----------------------------------------------------------------------
    def condition(self, cam_to_world: jax.Array) -> jax.Array:
        return self.head.label(cam_to_world)

    def _faded(self, step, images: float) -> jax.Array:
        """1 at step 0 → 0 after `images` training images (EG3D's kimg fades)."""
        seen = step.astype(jnp.float32) * self.batch
        return jnp.maximum(1.0 - seen / max(images, 1.0), 0.0)

    def generator_condition(self, cam_to_world, keys, step):
        """The rendering cameras' labels [B, 25], each swapped with probability p for the
        label of a camera drawn from the pose prior (EG3D swaps with another image's)."""
        if not self.head.conditional:
            return None
        loss = self.config.loss
        fade = self._faded(step, loss.pose_swap_fade_images)
        p = fade + (1.0 - fade) * loss.pose_swap_probability
        swap_keys, pose_keys = jax.vmap(lambda k: tuple(jax.random.split(
            jax.random.fold_in(k, 1))))(keys[0])
        swap = jax.vmap(lambda k: jax.random.bernoulli(k, p))(swap_keys)
        other = jax.vmap(lambda k: pose_sampling.sample_yaw_pitch(k, 1, self.poses)[0])(
            pose_keys)
        cameras = jnp.where(swap[:, None, None],
                            pose_sampling.cameras_at(other, self.poses), cam_to_world)
        return self.head.label(cameras)

    def inference_condition(self, batch: int):
        """EG3D conditions its samples on the frontal camera."""
        if not self.head.conditional:
            return None
        return jnp.broadcast_to(self.head.label(self.poses.reference_camera()),
                                (batch, LABEL_SIZE))

    # -- the generator's pass ----------------------------------------------------------
    def blur_sigma(self, step) -> jax.Array:
        loss = self.config.loss
        return loss.blur_sigma * self._faded(step, loss.blur_fade_images)

    def _blur(self, images, step):
        loss = self.config.loss
        sigma = self.blur_sigma(step)
        return jax.lax.cond(sigma > 0, lambda: gaussian_blur(images, sigma, loss.blur_sigma),
                            lambda: images.astype(jnp.float32))

    def generator_pass(self, g_params, ws, cameras, yaw_pitch, noise_rng, keys, step):
        """ws [B, n, w], cameras [B, V, 4, 4] → (the dual D's (image, raw) of every view
        [B, V, ...], {loss name: (term, weight)}, {discriminator: (fakes, weight)})."""
        density_keys, patch_keys = keys
        b, v = cameras.shape[:2]
        ray_keys = jax.vmap(lambda k: jax.random.fold_in(k, 5))(density_keys)
        rendered = self.head.render(g_params, ws, cameras, noise_rng, ray_keys=ray_keys)
        image, raw = rendered["image"], rendered["image_raw"]
        flat = lambda x: x.reshape((b * v,) + x.shape[2:])  # noqa: E731
        # EG3D's loss blurs the fake image, not the fake raw image (the real raw is).
        fakes = jax.tree.map(lambda x: x.reshape((b, v) + x.shape[1:]),
                             (self._blur(flat(image), step), flat(raw)))
        terms, others = {}, {}
        loss = self.config.loss
        planes = rendered["planes"]
        if self.imitation > 0:
            # Stage 2: the detail planes join the coarse ones for the density regulariser
            # and the patches alike (Mimic3D regularises the summed field).
            planes = {**planes, "detail": self.head.detail(
                g_params, planes["coarse"], ws, jax.random.fold_in(noise_rng, 6))}
        if loss.density_reg > 0:
            terms["loss/density_reg"] = (self._density_reg(g_params, planes, density_keys,
                                                           step), loss.density_reg)
        if self.imitation > 0:
            imitation, patches = self._imitation(g_params, planes, rendered, cameras[:, 0],
                                                 patch_keys)
            terms["loss/imitation"] = (imitation, self.imitation)
            others[PATCH_DISCRIMINATOR] = (patches, loss.patch_adversarial)
        return fakes, terms, others

    def _density_reg(self, g_params, planes, keys, step) -> jax.Array:
        """Lazy (every `density_reg_every` steps, scaled by the interval) L1 between the raw
        density at random box points and at points ε away (EG3D samples in [−1, 1]³ of
        its world, 1/8 of which is inside its box; here all points are in the box)."""
        loss = self.config.loss
        every = int(loss.density_reg_every)
        n, half = int(loss.density_reg_points), 0.5 * self.head.box_size
        offset = loss.density_reg_offset

        def term():
            def one(sample_planes, key):
                point_key, offset_key = jax.random.split(jax.random.fold_in(key, 2))
                box = jax.random.uniform(point_key, (n, 3), minval=-half, maxval=half)
                moved = box + offset * self.head.box_size * jax.random.normal(offset_key,
                                                                              (n, 3))
                raw = self.head.raw_density_box(g_params, sample_planes,
                                                jnp.concatenate([box, moved]))
                return jnp.mean(jnp.abs(raw[:n] - raw[n:]))

            return every * jnp.mean(jax.vmap(one)(planes, keys))

        return jax.lax.cond(step % every == 0, term, lambda: jnp.zeros((), jnp.float32))

    def _imitation(self, g_params, planes, rendered, cam_to_world, keys):
        """Mimic3D's 3D-to-2D imitation on each sample's first view → (loss, patches
        [B, P, P, 3]): a random P² window of the image rendered from the coarse + detail
        `planes` against the same window of the stop-gradient 2D super-resolution."""
        size, p = self.head.size, self.patch
        corners = random_windows(jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys), size, p)
        patch = self.head.render_direct(
            g_params, planes, cam_to_world[:, None], None, window=(corners, p, p),
            ray_keys=jax.vmap(lambda k: jax.random.fold_in(k, 7))(keys))["image"][:, 0]
        target = jax.lax.stop_gradient(crop(rendered["image"][:, 0], corners, p))
        if self.imitation_fn is not None:
            loss = self.imitation_fn(patch, target)
        else:
            loss = jnp.mean(jnp.abs(patch - target))
        return loss, patch

    def real_inputs(self, reals: jax.Array, keys, step) -> dict:
        """The reals as each discriminator sees them: (blurred image, blurred raw = the
        image downsampled to the render size) for the dual D, random P² crops for the
        patch D."""
        raw = resize(reals, self.head.render_size)
        inputs = {DISCRIMINATOR: (self._blur(reals, step), self._blur(raw, step))}
        if self.imitation > 0:
            corners = random_windows(jax.vmap(lambda k: jax.random.fold_in(k, 4))(keys[1]),
                                     self.head.size, self.patch)
            inputs[PATCH_DISCRIMINATOR] = crop(reals, corners, self.patch)
        return inputs

    def generate(self, g_params, ws, cameras, noise_rng, step=None) -> dict:
        """Views for eval and pictures: EG3D's super-resolved render; with Mimic3D's detail
        planes (stage 2) the image rendered at full resolution from the coarse + detail
        planes, no 2D super-resolution. {'image', 'depth', 'opacity'} [B, V, S, S, ...]."""
        planes, which = self._generated_planes(g_params, ws, noise_rng)
        if which == "coarse":
            out = self.head.render(g_params, ws, cameras, noise_rng, planes=planes)
            return {k: out[k] for k in ("image", "depth", "opacity")}
        return self.head.render_direct(g_params, planes, cameras,
                                       jax.random.fold_in(noise_rng, 1))

    def _generated_planes(self, g_params, ws, noise_rng) -> tuple[dict, str]:
        """The planes `generate` renders with `noise_rng`, and which of them it reads
        ('coarse', or 'both' with Mimic3D's detail planes): one source for the views and
        the meshes of a sample."""
        if not self.config.model.triplane.detail_planes:
            # The synthesis key `head.render` draws them with, so samples stay as they were.
            return self.head.planes(g_params, ws, jax.random.split(noise_rng)[0]), "coarse"
        return self.head.planes(g_params, ws, noise_rng, detail=True), "both"

    # -- the field of a sample (`--mode=render --seeds --mesh`) -------------------------
    def mesh_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) [3]: the tri-plane box, EG3D's [−box/2, box/2]³, in our world frame.
        `head.to_eg3d` is a flip and a shift, so the box stays axis-aligned."""
        half = 0.5 * self.head.box_size
        corners = np.asarray(list(itertools.product((-half, half), repeat=3)), np.float32)
        to_ours = np.linalg.inv(self.head.to_eg3d)
        ours = corners @ to_ours[:3, :3].T + to_ours[:3, 3]
        return ours.min(0), ours.max(0)

    def sample_density(self, g_params, ws, points, noise_rng) -> dict:
        """σ [B, P] and colour in [0, 1] [B, P, 3] at world points [B, P, 3] of the planes
        `generate` renders from ws [B, n, w] with `noise_rng`."""
        planes, which = self._generated_planes(g_params, ws, noise_rng)

        def one(inputs):
            sample_planes, sample_points = inputs
            sigma, feats = self.head.field(g_params, sample_planes, which)(sample_points)
            return {"density": sigma, "color": feats[..., :3]}

        # One sample at a time: a mesh grid has 64³ points or more per sample.
        return jax.lax.map(one, (planes, points))
