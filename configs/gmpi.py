"""GMPI (Zhao et al., arXiv 2207.10642): StyleGAN2 + depth-conditioned alpha planes,
rendered as a multiplane image, against a pose-conditioned discriminator.

Presets: tiny (CPU, synthetic scenes at 32², minutes); ffhq256, afhq256, ffhq1024 (GMPI's
settings, on EG3D-format datasets built by data/prepare_eg3d.py: data/README.md). Usage:
  --config=configs/gmpi.py:tiny
Every value the paper does not publish is tagged [choice].
"""

import ml_collections

from configs import gan_common

PRESETS = ("tiny", "ffhq256", "afhq256", "ffhq1024")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    c = gan_common.gan_config(preset)
    c.model = ml_collections.ConfigDict({
        "head": "gmpi",
        "resolution": 256,
        "z_dim": 512,
        "w_dim": 512,
        "mapping_layers": 8,
        "channel_base": 32768,  # GMPI's StyleGAN2 sizes (SPECS: base 32768, max 512)
        "channel_max": 512,
        "alpha_max_resolution": 256,  # alphas at ≤ 256², upsampled above
        "num_planes": 32,  # training; any count at inference
        "num_planes_eval": 96,
        "near": 0.95,  # FFHQ's plane range (GMPI §4), in units of the camera radius
        "far": 1.12,
        "w_average_beta": 0.995,  # StyleGAN2's w_avg tracking
        "disc_channel_base": 32768,
        "disc_channel_max": 512,
        "disc_mbstd_group_size": 4,
        "disc_cmap_dim": 16,  # pose → 16-d projection (GMPI's D)
        "dtype": "float32",
        # GMNR's α-guided view-dependent colour (configs/gmnr.py): the fraction of each
        # plane's visible pixels refined per training view, 0 = off (GMPI).
        "view_dependence": {"fraction": 0.0, "position_width": 784, "view_width": 64},
    })
    c.loss = ml_collections.ConfigDict({
        "r1_gamma": 10.0,
        "r1_every": 16,  # lazy R1 (StyleGAN2 §B)
        "style_mixing": 0.9,  # StyleGAN2's mixing probability
        "views_per_z": 4,  # GMPI: G updated on the worst of 4 views per z
        "view_consistency": 0.0,  # GMNR's mirrored-view loss weight (configs/gmnr.py)
        # GMPI's shading augmentation (geometry/shading.py): colours · (ka + kd·max(0,
        # −n·l)), a light per sample at yaw N(0, 0.2), elevation 0.2 ± 0.05 rad above the
        # object, ramped in over 1000 steps from step 1000 (GMNR's config: ka 0.9, kd 0.1).
        "shading": {"enabled": False, "ka": 0.9, "kd": 0.1, "yaw_std": 0.2,
                    "elevation": 0.2, "pitch_std": 0.05, "start_step": 1000,
                    "ramp_steps": 1000},
    })
    # Adam lr 0.002, β (0, 0.9), gradient clip 10 (GMPI's recipe); no decay or warm-up.
    block = {"learning_rate": 0.002, "warmup_steps": 0, "decay": "constant", "b1": 0.0,
             "b2": 0.9, "weight_decay": 0.0, "grad_clip": 10.0}
    c.optim = ml_collections.ConfigDict({"generator": dict(block),
                                         "discriminator": dict(block)})
    # [choice] GMPI's per-step EMA 0.999 at batch 32: a half-life of ~22k images.
    c.ema = ml_collections.ConfigDict({"half_life_images": 22_000, "rampup": 0.05})
    if preset in ("ffhq256", "afhq256", "ffhq1024"):
        # [choice] From scratch: GMPI fine-tunes a pretrained StyleGAN2 for a few thousand
        # steps; this library cannot import StyleGAN2 weights yet, so its presets train
        # the whole generator, for StyleGAN2's order of images (6.4M at batch 32).
        c.total_steps = 200_000
        gan_common.at_scale(c, preset, 256)
        c.loss.shading.enabled = True
    if preset == "afhq256":
        # GMPI's AFHQ cats: planes 2.55–2.80, yaw/pitch σ 0.19/0.15 rad at 3σ, FOV 13.39°,
        # radius 2.7.
        c.model.update(near=2.55, far=2.80)
        c.camera.update(yaw_std=0.19, pitch_std=0.15, truncation=3.0, radius=2.7,
                        fov_deg=13.39)
    if preset == "ffhq1024":
        # GMPI's 1024² generator: alphas at ≤ 256² upsampled by the skip path.
        c.data.image_size = 1024
        c.model.resolution = 1024
        c.global_batch_size = 16  # [choice] half the 256² batch for memory
    if preset == "tiny":
        gan_common.tiny_scenes(c)
        c.model.update(resolution=32, z_dim=64, w_dim=64, mapping_layers=2,
                       channel_base=1024, channel_max=64, num_planes=8, num_planes_eval=16,
                       near=3.5, far=14.0, disc_channel_base=512, disc_channel_max=32)
    return c
