"""2D ViT-VQGAN autoencoder training (arXiv 2110.04627), the first task.

Generator = encoder → factorised quantizer → 2D ViT decoder; a StyleGAN2
residual discriminator joins at `loss.adversarial_start_step`. Losses
(§3.3): λ_l2·L2 + VQ + λ_lpips·LPIPS + λ_adv·non-saturating GAN; the
discriminator's update (the GAN kit, tasks/gan.py) adds lazy R1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vq3d_jax import losses
from vq3d_jax.models import lpips
from vq3d_jax.models.discriminator import ResidualDiscriminator
from vq3d_jax.models.vit_vqgan import VitVQGAN
from vq3d_jax.nn.quantizer import code_counts, code_statistics, restart_dead_codes
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


def perceptual_loss_fn(weights_path: str):
    """LPIPS-VGG (models/lpips.py) as `(recon, target) -> batch mean`; None when off.

    A set path that is missing or holds other weights is an error here, at start-up.
    """
    if not weights_path:
        return None
    return lpips.make_lpips_fn(weights_path, "loss.lpips_weights")


class ViTVQGANTask:
    train_keys = ("image",)
    eval_keys = ("image",)
    num_sample_images = 8
    decoder_name = "vit2d"
    # Parameter keys of the discriminators; `generator_loss` names its fakes alike.
    discriminator_names = (DISCRIMINATOR,)
    fid_images_are = "reconstructions"  # the FID protocol line names what it scored

    def build_autoencoder(self, model_config, **common) -> VitVQGAN:
        """This task's autoencoder from the fields every head shares (`common`)."""
        del model_config
        return VitVQGAN(**common)

    def __init__(self, config):
        self.config = config
        m = config.model
        if m.decoder != self.decoder_name:
            raise ValueError(
                f"model.decoder={m.decoder!r}: {type(self).__name__} decodes "
                f"{self.decoder_name!r}."
            )
        dtype = jnp.dtype(m.dtype)
        self.image_size = int(config.data.image_size)
        self.autoencoder = self.build_autoencoder(
            m,
            encoder_variant=m.encoder_variant,
            decoder_variant=m.decoder_variant,
            patch_size=m.patch_size,
            image_size=self.image_size,
            codebook_size=m.codebook_size,
            code_dim=m.code_dim,
            beta=m.vq_beta,
            dtype=dtype,
            remat=m.remat,
            attention_impl=m.attention_impl or None,
            # Runs saved before these keys existed keep the behaviour they were trained with.
            zero_init_residual=m.get("zero_init_residual", False),
            rescale_codes=m.get("rescale_codes", False),
        )
        self.discriminator = ResidualDiscriminator(
            resolution=self.image_size,
            channel_base=m.disc_channel_base,
            channel_max=m.disc_channel_max,
            mbstd_group_size=m.disc_mbstd_group_size,
            dtype=dtype,
        )
        o, loss = config.optim, config.loss
        self.generator_tx, self.generator_lr = make_optimizer(o.generator, config.total_steps)
        # A discriminator's optimizer counts its own updates, which begin at
        # `loss.adversarial_start_step` (the kit's gate skips it before): its warm-up
        # starts with its first update and its decay ends with the run.
        disc_tx, _ = make_optimizer(
            o.discriminator, max(config.total_steps - loss.adversarial_start_step, 1))
        self.discriminators = tuple(
            gan.Discriminator(name, self.discriminator, disc_tx, loss.r1_gamma,
                              int(loss.r1_every))
            for name in self.discriminator_names
        )
        self.ema = config.get("ema")  # runs saved before the key kept no EMA
        self.perceptual = perceptual_loss_fn(config.loss.lpips_weights)

    # -- state -------------------------------------------------------------------------
    def init_generator(self, rng: jax.Array, images: jax.Array) -> dict:
        return self.autoencoder.init(rng, images)["params"]

    def init_state(self, rng: jax.Array) -> TrainState:
        g_rng, d_rng, step_rng = jax.random.split(rng, 3)
        images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        params = {GENERATOR: self.init_generator(g_rng, images)}
        opt_state = {GENERATOR: self.generator_tx.init(params[GENERATOR])}
        for i, d in enumerate(self.discriminators):
            params[d.name] = d.network.init(jax.random.fold_in(d_rng, i), images)["params"]
            opt_state[d.name] = d.tx.init(params[d.name])
        # Zero usage: every code counts as dead at step 0, so the first restart
        # places the whole codebook on encoder latents (a data-dependent init).
        model_state = {"code_usage": jnp.zeros((self.config.model.codebook_size,), jnp.float32)}
        if self.keeps_ema:
            model_state[gan.GENERATOR_EMA] = params[GENERATOR]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            rng=step_rng,
            model_state=model_state,
        )

    @property
    def keeps_ema(self) -> bool:
        return bool(self.ema and self.ema.half_life_images)

    # -- training ----------------------------------------------------------------------
    def generator_loss(self, g_params, d_params: dict, batch, keys, gan_on):
        """→ (total, (fakes per discriminator, quantizer aux, loss terms)); fakes in [−1, 1].

        `keys` [B]: each example's PRNG key (none needed here; the NeRF decoder's are)."""
        del keys
        cfg = self.config.loss
        images = images_to_float(batch["image"])
        recon, aux = self.autoencoder.apply({"params": g_params}, images)
        recon = recon.astype(jnp.float32)
        l2 = losses.l2_loss(recon, images)
        g_adv = self.discriminators[0].generator_loss(d_params[DISCRIMINATOR], recon, gan_on)
        total = cfg.l2 * l2 + cfg.vq * aux["vq_loss"] + gan_on * cfg.adversarial * g_adv
        terms = {"loss/l2": l2, "loss/vq": aux["vq_loss"], "loss/g_adv": g_adv,
                 "train/psnr": jnp.mean(losses.psnr(recon, images, max_val=2.0))}
        perceptual = None if self.perceptual is None else self.perceptual(recon, images)
        total = total + self._perceptual_term(perceptual, terms)
        return total, ({DISCRIMINATOR: recon}, aux, terms)

    def _perceptual_term(self, distance, terms: dict):
        """λ_lpips · the LPIPS distance, logged in `terms`; 0 with LPIPS off (None)."""
        if distance is None:
            return 0.0
        terms["loss/lpips"] = distance
        return self.config.loss.lpips * distance

    def train_step(self, state: TrainState, batch):
        gan_on = (state.step >= self.config.loss.adversarial_start_step).astype(jnp.float32)
        step_rng = jax.random.fold_in(state.rng, state.step)
        loss_rng, restart_rng = jax.random.split(step_rng)
        keys = accumulation.example_keys(loss_rng, batch["image"].shape[0])
        d_params = {d.name: state.params[d.name] for d in self.discriminators}

        def gradients(inputs):
            # The generator's loss against the discriminators as they are, and each
            # discriminator's against the generator as it is: one pass, two updates.
            batch, keys = inputs
            (g_total, (fakes, aux, terms)), g_grads = jax.value_and_grad(
                self.generator_loss, has_aux=True
            )(state.params[GENERATOR], d_params, batch, keys, gan_on)
            grads, means = {GENERATOR: g_grads}, {"loss/total": g_total, **terms}
            reals = images_to_float(batch["image"])
            for d in self.discriminators:
                grads[d.name], d_metrics = d.gated_gradients(
                    d_params[d.name], reals, fakes[d.name], state.step, gan_on)
                means.update(d_metrics)
            latents = jax.lax.stop_gradient(aux["latents"])
            return grads, means, {"codes": aux["codes"], "latents": latents}

        grads, metrics, codes = accumulation.mean_over_microbatches(
            gradients, (batch, keys), accumulation.steps_of(self.config))
        g_params, g_opt = gan.apply_gradients(
            self.generator_tx, grads[GENERATOR], state.opt_state[GENERATOR],
            state.params[GENERATOR])
        g_params, model_state, restarted = self._restart_codes(state, g_params, codes,
                                                               restart_rng)
        params, opt_state = {GENERATOR: g_params}, {GENERATOR: g_opt}
        for d in self.discriminators:
            params[d.name], opt_state[d.name] = d.gated_apply(
                grads[d.name], state.opt_state[d.name], d_params[d.name], gan_on)
        if self.keeps_ema:
            beta = gan.ema_decay(state.step, self.config.global_batch_size,
                                 self.ema.half_life_images, self.ema.rampup)
            model_state = {**model_state, gan.GENERATOR_EMA: gan.update_ema(
                state.model_state[gan.GENERATOR_EMA], g_params, beta)}
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
        )
        perplexity, usage = code_statistics(codes["codes"], self.config.model.codebook_size)
        metrics.update({
            "gan/active": gan_on,
            "vq/perplexity": perplexity,
            "vq/codebook_usage": usage,
            "vq/dead_codes": (1.0 - usage) * self.config.model.codebook_size,
            "vq/restarted_codes": restarted,
            "train/learning_rate": self.generator_lr(state.step),
            "train/grad_norm": optax.tree.norm(grads[GENERATOR]),
        })
        return new_state, metrics

    def _restart_codes(self, state: TrainState, g_params, aux, rng):
        m = self.config.model
        usage = state.model_state["code_usage"]
        counts = code_counts(aux["codes"], m.codebook_size)
        if not m.dead_code_restart:
            return g_params, state.model_state, jnp.zeros((), jnp.float32)
        quantizer = g_params["quantizer"]
        codebook, usage, restarted = restart_dead_codes(
            quantizer["codebook"],
            usage,
            counts,
            aux["latents"],
            rng,
            decay=m.restart_decay,
            threshold=m.restart_threshold,
        )
        g_params = {**g_params, "quantizer": {**quantizer, "codebook": codebook}}
        return g_params, {**state.model_state, "code_usage": usage}, restarted

    def inference_generator(self, state: TrainState):
        """The generator weights eval and pictures use: the EMA when the run keeps one."""
        return gan.inference_generator(state)

    # -- codes (what a stage-2 prior models) ----------------------------------------------
    def autoencoder_params(self, g_params) -> dict:
        """The `VitVQGAN` part of the generator's params (here: all of them)."""
        return g_params

    def encode_codes(self, g_params, images: jax.Array) -> jax.Array:
        """Images in [−1, 1] [B, S, S, 3] → code indices [B, L] int32 (raster order)."""
        _, aux = self.autoencoder.apply({"params": self.autoencoder_params(g_params)}, images,
                                        method=VitVQGAN.encode)
        return aux["codes"].reshape(images.shape[0], -1)

    def pictures_from_codes(self, g_params, codes: jax.Array) -> dict:
        """Code indices [B, L] → {'image': decoded images uint8}."""
        images = self.autoencoder.apply({"params": self.autoencoder_params(g_params)}, codes,
                                        method=VitVQGAN.decode_codes)
        return {"image": images_to_uint8(images.astype(jnp.float32))}

    # -- evaluation and pictures -------------------------------------------------------
    def _reconstruct(self, state: TrainState, images):
        recon, _ = self.autoencoder.apply({"params": self.inference_generator(state)}, images)
        return recon.astype(jnp.float32)

    def fid_images(self, state: TrainState, batch):
        """What FID scores: the reconstructions, uint8 (rFID)."""
        return images_to_uint8(self._reconstruct(state, images_to_float(batch["image"])))

    def eval_step(self, state: TrainState, batch):
        images = images_to_float(batch["image"])
        recon = jnp.clip(self._reconstruct(state, images), -1.0, 1.0)
        per_pixel = jnp.mean(jnp.square(recon - images), axis=(1, 2, 3))
        return {"psnr": losses.psnr(recon, images, max_val=2.0), "l2": per_pixel}

    def sample(self, state: TrainState, batch):
        images = images_to_float(batch["image"][: self.num_sample_images])
        recon = self._reconstruct(state, images)
        return {"reconstruction": image_grid([images_to_uint8(images), images_to_uint8(recon)])}
