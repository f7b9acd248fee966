"""2D ViT-VQGAN autoencoder (Yu et al., arXiv 2110.04627): VQ3D's base.

Presets: `tiny` (CPU, minutes, synthetic scenes 64²) | `imagenet256` (paper
sizes: Base encoder/decoder 12/768/12, codebook 8192×32, batch 256).
Usage: --config=configs/vit_vqgan.py:tiny
"""

import ml_collections

from configs import common

PRESETS = ("tiny", "imagenet256")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    c = common.base_config()
    c.task = "vit_vqgan"
    c.preset = preset

    c.model = ml_collections.ConfigDict(
        {
            "decoder": "vit2d",
            "encoder_variant": "B",  # models/vit_vqgan.py:decode_variant
            "decoder_variant": "B",
            "patch_size": 8,  # conv patchify stride 8 → 32×32 tokens at 256² (§3.1)
            "codebook_size": 8192,
            "code_dim": 32,  # factorised codes (§3.2)
            "vq_beta": 0.25,
            # [choice] Random restarts of dead codes (Jukebox §2.3), beyond the
            # ViT-VQGAN paper: a code whose EMA token count per step falls under
            # the threshold moves onto a random current latent. Off → plain VQ.
            "dead_code_restart": True,
            "restart_decay": 0.99,
            "restart_threshold": 0.01,
            "dtype": "bfloat16",  # compute dtype; params stay float32
            "remat": False,
            # [choice] Each transformer block starts as the identity (zero-initialised
            # output projections) and unit code vectors are scaled by √code_dim on their
            # way into the decoder: at init the tokens then carry their own patch's
            # content, not a random mix of all patches buried under the positions. Both
            # cut the slow start that made the tiny autoencoder output one mean image
            # (bench/results/README.md, stage-1 learning).
            "zero_init_residual": True,
            "rescale_codes": True,
            "attention_impl": "",  # '' = XLA; 'cudnn' = fused flash attention on GPU
            # StyleGAN2 residual discriminator (§3.3 uses StyleGAN's D).
            "disc_channel_base": 16384,
            "disc_channel_max": 512,
            "disc_mbstd_group_size": 4,
        }
    )
    # Loss weights: L2 1.0, LPIPS 0.1, adversarial 0.1, as a public ViT-VQGAN
    # reimplementation sets them.
    c.loss = ml_collections.ConfigDict(
        {
            "l2": 1.0,
            "vq": 1.0,
            "lpips": 0.1,
            "lpips_weights": "",  # path to converted LPIPS weights; '' = LPIPS off
            "adversarial": 0.1,
            "adversarial_start_step": 20000,  # [choice] D joins after the AE settles
            "r1_gamma": 10.0,  # [choice] StyleGAN2's default for 256²
            "r1_every": 16,  # lazy R1 (StyleGAN2 App. B)
        }
    )
    # One optimizer block per network (tasks/common.py:make_optimizer). Adam β (0.9, 0.99),
    # lr 1e-4, 5k warm-up, weight decay 1e-4 (ViT-VQGAN §4.1); the discriminators share
    # a block without weight decay, whose schedule counts from their first update
    # (loss.adversarial_start_step) to the end of the run.
    c.optim = ml_collections.ConfigDict(
        {
            "generator": {
                "learning_rate": 1e-4,
                "warmup_steps": 5000,
                "decay": "cosine",  # cosine | constant (after warm-up)
                "b1": 0.9,
                "b2": 0.99,
                "weight_decay": 1e-4,
                "grad_clip": 1.0,
            },
            "discriminator": {
                "learning_rate": 1e-4,
                "warmup_steps": 5000,
                "decay": "cosine",
                "b1": 0.9,
                "b2": 0.99,
                "weight_decay": 0.0,
                "grad_clip": 1.0,
            },
        }
    )
    # [choice] An EMA of the generator's weights (StyleGAN2 §B: half-life in images,
    # ramped up over the first images seen), used by eval and pictures when on. Off for
    # the autoencoders: the codebook's dead-code restarts move codes in one step, which an
    # average would smear. 0 = off.
    c.ema = ml_collections.ConfigDict({"half_life_images": 0, "rampup": 0.05})

    if preset == "tiny":
        c.total_steps = 300
        c.global_batch_size = 16
        c.log_every = 25
        c.checkpoint_every = 100
        c.sample_every = 0
        c.model.update(
            encoder_variant="mu",
            decoder_variant="mu",
            codebook_size=512,
            dtype="float32",
            disc_channel_base=512,
            disc_channel_max=32,
        )
        c.loss.adversarial_start_step = 100
        c.optim.generator.update(learning_rate=1e-3, warmup_steps=20)
        c.optim.discriminator.update(learning_rate=2e-4, warmup_steps=20)
        c.data.image_size = 64
        c.eval.update(num_examples=256, global_batch_size=32)
    elif preset == "imagenet256":
        c.total_steps = 500_000
        c.global_batch_size = 256
        c.log_every = 100
        c.checkpoint_every = 5000
        c.eval_every = 50_000
        c.sample_every = 5000
        c.data.update(
            name="imagenet2012",  # built as array_record, see data/README.md
            image_size=256,
            random_flip=True,
            worker_count=8,
        )
        c.eval.update(num_examples=50_000, global_batch_size=256)
    return c
