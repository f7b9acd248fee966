"""EG3D (Chan et al., arXiv 2112.07945): StyleGAN2 → tri-plane → neural render → 2D
super-resolution, against a dual, camera-conditioned discriminator (the tri-plane head:
models/triplane_gan.py, tasks/gan_triplane.py).

Presets: tiny (CPU, synthetic scenes at 32², minutes); ffhq512, afhqcats512 (EG3D's
published runs, on EG3D-format datasets built by data/prepare_eg3d.py: data/README.md).
Usage:
  --config=configs/eg3d.py:tiny
Values are the official code's (NVlabs/eg3d train.py and docs/models.md; commit 7cf1fd1)
unless tagged [choice].
"""

import ml_collections

from configs import gan_common

PRESETS = ("tiny", "ffhq512", "afhqcats512")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    c = gan_common.gan_config(preset)
    c.model = ml_collections.ConfigDict({
        "head": "triplane",
        "resolution": 512,  # the super-resolved image
        "z_dim": 512,
        "w_dim": 512,
        "mapping_layers": 2,  # --map_depth=2
        "channel_base": 32768,  # --cbase, --cmax
        "channel_max": 512,
        "near": 2.25,  # ray_start / ray_end (FFHQ and AFHQ)
        "far": 3.3,
        "w_average_beta": 0.998,  # StyleGAN2-ADA's w_avg_beta
        "disc_channel_base": 32768,
        "disc_channel_max": 512,
        "disc_mbstd_group_size": 4,
        "disc_cmap_dim": 512,  # the D's camera mapping: 8 layers to 512
        "disc_condition_layers": 8,
        "dtype": "float32",
        "triplane": {
            "plane_resolution": 256,  # 3 × 32 channels at 256²
            "plane_channels": 32,
            "decoder_hidden": 64,
            "decoder_features": 32,  # decoder_output_dim: RGB + 29 more for the SR
            "render_resolution": 64,  # neural_rendering_resolution (ffhq512-64)
            "sr_input_resolution": 128,  # SuperresolutionHybrid8XDC resizes to 128²
            "sr_channel_base": 65536,  # its blocks: 256 channels at 256², 128 at 512²
            "sr_channel_max": 256,
            "num_samples": 48,  # depth_resolution
            "num_importance": 48,  # depth_resolution_importance
            "box_size": 1.0,  # box_warp
            "pivot": (0.0, 0.0, 0.2),  # avg_camera_pivot (FFHQ), EG3D's world
            "pose_conditioning": True,  # --gen_pose_cond=True
            "conv3d_resolutions": (),  # Mimic3D's 3D-aware convolutions: configs/mimic3d.py
            "detail_planes": False,
            "chunk_size": 0,  # rays per lax.map chunk; 0 = all at once
        },
    })
    c.loss = ml_collections.ConfigDict({
        "r1_gamma": 1.0,  # --gamma=1 (FFHQ)
        "r1_every": 16,  # D_reg_interval
        "style_mixing": 0.0,  # --style_mixing_prob default
        "views_per_z": 1,
        # EG3D's D blur fade-in: σ = 10 px at 512², to 0 over 200k images.
        "blur_sigma": 10.0,
        "blur_fade_images": 200_000,
        # Generator pose conditioning: swap probability 0.5, from 1 over 1M images.
        "pose_swap_probability": 0.5,
        "pose_swap_fade_images": 1_000_000,
        # Density regularisation: 0.25·L1 of raw σ at 1000 points per sample and at
        # points 0.004 box sizes away, every 4 steps.
        "density_reg": 0.25,
        "density_reg_every": 4,
        "density_reg_points": 1000,
        "density_reg_offset": 0.004,
        # Mimic3D's stage 2 (configs/mimic3d.py); 0 = off.
        "imitation": 0.0,
        "patch_size": 64,
        "patch_adversarial": 0.1,
        "patch_r1_gamma": 1.0,
        "lpips_weights": "",
        "require_lpips": False,
    })
    # Adam β (0, 0.99) with StyleGAN2-ADA's lazy-regularisation correction folded in:
    # G lr 0.0025 and D lr 0.002 (--glr, --dlr) times c = k/(k+1), β₂ = 0.99^c, for the
    # density regulariser's k = 4 and R1's k = 16.
    c.optim = ml_collections.ConfigDict({
        "generator": {"learning_rate": 0.0025 * 4 / 5, "warmup_steps": 0,
                      "decay": "constant", "b1": 0.0, "b2": 0.99 ** (4 / 5),
                      "weight_decay": 0.0, "grad_clip": 1e9},
        "discriminator": {"learning_rate": 0.002 * 16 / 17, "warmup_steps": 0,
                          "decay": "constant", "b1": 0.0, "b2": 0.99 ** (16 / 17),
                          "weight_decay": 0.0, "grad_clip": 1e9},
    })
    # G EMA: --ema_kimg = batch · 10/32 = 10k images at batch 32, ramp-up 0.05.
    c.ema = ml_collections.ConfigDict({"half_life_images": 10_000, "rampup": 0.05})
    # A run whose networks start this one (Mimic3D's stage 2 on its stage 1); '' = none.
    c.stage1 = ml_collections.ConfigDict({"workdir": ""})
    # EG3D's cameras: radius 2.7 about the pivot, focal 4.2647 image widths (FOV 13.37°).
    # [choice] Training poses from truncated Gaussians (GMPI's FFHQ σ), where EG3D
    # renders at the dataset's own camera labels.
    c.camera.update(radius=2.7, fov_deg=13.37)
    if preset in ("ffhq512", "afhqcats512"):
        c.total_steps = 25_000_000 // 32  # --kimg=25000 at batch 32
        gan_common.at_scale(c, preset, 512)
        c.data.random_flip = False  # EG3D's datasets hold the mirrored images already
    if preset == "afhqcats512":
        # docs/models.md: gamma 5, gpc_reg_prob 0.8, resumed from FFHQ (ADA not here).
        c.loss.update(r1_gamma=5.0, pose_swap_probability=0.8)
        c.model.triplane.pivot = (0.0, 0.0, -0.06)
        c.camera.update(yaw_std=0.19, pitch_std=0.15, truncation=3.0)  # GMPI's AFHQ σ
    if preset == "tiny":
        gan_common.tiny_scenes(c)
        c.model.update(resolution=32, z_dim=64, w_dim=64, channel_base=1024, channel_max=64,
                       near=2.0, far=10.0, disc_channel_base=512, disc_channel_max=32,
                       disc_cmap_dim=64, disc_condition_layers=2)
        # [choice] CPU sizes: 32² planes of 16 channels, 16² renders with 12 + 12
        # samples, super-resolved ×2; an 8-unit box around the scene centre covers
        # what a 50° camera 6 units away sees of it.
        c.model.triplane.update(plane_resolution=32, plane_channels=16, decoder_hidden=32,
                                decoder_features=16, render_resolution=16,
                                sr_input_resolution=16, sr_channel_base=1024,
                                sr_channel_max=64, num_samples=12, num_importance=12,
                                box_size=8.0, pivot=(0.0, 0.0, 0.0))
        # [choice] The fades scaled to 16k images (2000 steps of 8): blur 1 px fading
        # over 4k images, the pose swap over 4k; 256 density points.
        c.loss.update(blur_sigma=1.0, blur_fade_images=4000, pose_swap_fade_images=4000,
                      density_reg_points=256)
    return c
