"""GMPI (Zhao et al., arXiv 2207.10642): StyleGAN2 + depth-conditioned alpha planes,
rendered as a multiplane image, against a pose-conditioned discriminator.

Presets: tiny (CPU, synthetic scenes at 32², minutes); ffhq256, afhq256, ffhq1024 (GMPI's
settings, on EG3D-format datasets built by data/prepare_eg3d.py: data/README.md). Usage:
  --config=configs/gmpi.py:tiny
Every value the paper does not publish is tagged [choice].
"""

import ml_collections

from configs import common

PRESETS = ("tiny", "ffhq256", "afhq256", "ffhq1024")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    c = common.base_config()
    c.task = "gan"
    c.preset = preset
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
    # Training poses: yaw/pitch truncated Gaussians on a sphere about the object, looking
    # at its centre (FFHQ: σ 0.289 / 0.127 rad, 2σ, FOV 12.6°, radius 1). `elevation_deg`:
    # the dataset cameras' mean elevation, from which real pitches are measured.
    c.camera = ml_collections.ConfigDict({
        "yaw_std": 0.289, "pitch_std": 0.127, "truncation": 2.0, "radius": 1.0,
        "fov_deg": 12.6, "elevation_deg": 0.0,
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
    # `sample` writes 16-frame orbits; `--mode=render` videos of render_frames.
    c.sample = ml_collections.ConfigDict({"num_images": 8, "seed": 0, "psi": 0.7,
                                          "orbit_frames": 16, "render_frames": 48})
    # FID/KID/SWD of one sample per eval image at a pose drawn from the training
    # distribution ('sampled': novel views), or at the mean pose ('canonical').
    c.eval.pose = "sampled"
    c.data.with_cameras = True  # the real images' poses condition the discriminator
    if preset in ("ffhq256", "afhq256", "ffhq1024"):
        # [choice] From scratch: GMPI fine-tunes a pretrained StyleGAN2 for a few thousand
        # steps; this library cannot import StyleGAN2 weights yet, so its presets train
        # the whole generator, for StyleGAN2's order of images (6.4M at batch 32).
        c.total_steps = 200_000
        c.global_batch_size = 32
        c.log_every = 100
        c.checkpoint_every = 2000
        c.eval_every = 20_000
        c.sample_every = 5000
        # GAN FID is against the training images; x-flips mirror the cameras too.
        c.data.update(name=preset, image_size=256, random_flip=True, eval_split="train")
        c.eval.update(num_examples=10_000, global_batch_size=64)  # [choice] FID-10k
        c.eval.swd.num_images = 10_000
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
        # The synthetic scenes at 32²: cameras ~6 units from the scene centre, yaw
        # U(±10°), elevation 18 ± 3° (datasets/scenes.py). [choice] Every training scene's
        # 6 held-out views (yaw ±10°/±20°, pitch ±10°) join as real images, one of the 7
        # drawn per example: yaw σ ≈ 13°, pitch σ ≈ 6° (with only the canonical views the
        # depth stayed flat: bench/results/README.md, 2026-12-02).
        c.total_steps = 2000
        c.global_batch_size = 8
        c.log_every = 50
        c.checkpoint_every = 500
        c.data.image_size = 32
        c.model.update(resolution=32, z_dim=64, w_dim=64, mapping_layers=2,
                       channel_base=1024, channel_max=64, num_planes=8, num_planes_eval=16,
                       near=3.5, far=14.0, disc_channel_base=512, disc_channel_max=32)
        c.data.train_on_novel_views = True
        c.camera.update(yaw_std=0.23, pitch_std=0.1, truncation=2.0, radius=6.0,
                        fov_deg=50.0, elevation_deg=18.0)
        c.loss.views_per_z = 1  # [choice] CPU: one view per z
        c.ema.half_life_images = 2000  # [choice] ~250 steps at batch 8
        c.eval.update(num_examples=256, global_batch_size=32)
        c.eval.swd.num_images = 256  # the quality figure without Inception weights
    return c
