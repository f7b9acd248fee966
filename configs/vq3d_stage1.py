"""VQ3D stage 1 (Sargent et al., arXiv 2302.06833): one image → codes → contracted tri-plane NeRF.

The ViT-VQGAN autoencoder (configs/vit_vqgan.py) with its decoder head swapped
for tri-planes rendered by a small NeRF MLP (`model.decoder = "nerf"`; "vit2d"
keeps the 2D decoder). Losses: L2 + VQ + depth + adversarial on the canonical
view (main D) and on novel views (novel-view D).

Presets: tiny (CPU, minutes, synthetic scenes at 32²) | synthetic128 (a GPU run on the
synthetic scenes) | imagenet256 (paper-sized). Usage:
  --config=configs/vq3d_stage1.py:tiny
Every value the paper does not publish is tagged [choice].
"""

import ml_collections

from configs import vit_vqgan

PRESETS = ("tiny", "synthetic128", "imagenet256")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    # synthetic128 starts from the tiny schedule and grows the model below.
    c = vit_vqgan.get_config("imagenet256" if preset == "imagenet256" else "tiny")
    c.task = "vq3d_stage1"
    c.preset = preset
    c.model.decoder = "nerf"
    c.model.update(
        plane_resolution=256,  # [choice] 3 planes (xy, yz, zx) × 32 channels at 256² (EG3D)
        plane_channels=32,
        nerf_hidden=64,  # [choice] EG3D's decoder: one softplus layer of 64
        nerf_layers=1,
        nerf_density_bias=-1.0,  # σ = softplus(raw − 1): empty space starts see-through
        # [choice] How decoder output becomes tri-planes (models/vq3d.py:lift_feature_map):
        # 'splat' = an image-aligned map of per-pixel features and disparity, splatted at
        # that depth along the canonical rays; 'tokens' = per-token plane patches, whose
        # image → plane routing the decoder must learn first (it passed almost no image
        # content on tiny: bench/results/README.md, stage-1 learning).
        plane_lift="splat",
        # [choice] Texels the splat left empty take coarser averages of what landed near
        # them (pull-push, models/vq3d.py:lift_feature_map) instead of 0, so views that see
        # past the canonical frustum or behind objects extend what the image shows.
        plane_fill="pull_push",
        # [choice] A second ViT decoder of the same size predicts the disparity the splat
        # lifts at, so depth does not compete with colour for one trunk's capacity. On tiny
        # at step 1000 (256 held-out scenes) one shared trunk scored 24.1 dB / AbsRel 0.100
        # / 22.3 dB novel, two 25.6 / 0.088 / 23.0 (bench/results/README.md, 2026-12-02).
        depth_decoder=True,
    )
    # Rendering [choice]: canonical pinhole camera at (0, 0, −camera_distance) looking
    # down +z at the origin; samples uniform in disparity from `near` to `far` (inf =
    # unbounded), then importance resampling; rendered at `resolution` and bilinearly
    # upsampled to the image size. World points × scene_scale are contracted
    # (mip-NeRF 360), so a ball of radius 1/scene_scale around the origin gets the
    # planes' full resolution.
    c.render = ml_collections.ConfigDict(
        {
            "resolution": 128,
            "fov_deg": 50.0,
            "camera_distance": 6.0,
            # Degrees above the horizon the canonical camera looks down at the origin from;
            # the dataset's typical elevation, so that the model's world up is the scene's
            # (imagenet256: 0, level photos).
            "camera_elevation_deg": 18.0,
            # At distance 6 and FOV 50° the frustum at the origin spans ±2.8 units: ×0.5
            # puts it at ±0.64 of the plane extent (×1/3: ±0.47, fewer texels for the
            # objects). On tiny (with 64² planes) novel-view PSNR at step 500 went
            # 16.5 → 16.7 dB: small (bench/results/2026-11-22_cpu).
            "scene_scale": 0.5,
            "near": 2.5,
            "far": float("inf"),
            "num_samples": 48,  # EG3D's 48 + 48
            "num_importance": 48,
            "chunk_size": 0,  # rays per lax.map chunk per image; 0 = all at once
            # [choice] While the discriminators are off, the canonical L2 and depth losses
            # use this many random rays per image (NeRF's ray batches) instead of the whole
            # render; 0 = all. Once a discriminator needs whole pictures every ray is drawn.
            "train_rays": 4096,  # a quarter of a 128² render
            # [choice] far = inf: every ray ends on one more, opaque sample at infinity,
            # looked up in the ray's direction (geometry/renderer.py), so the sky and the
            # far field stay put and level under yaw, as they do in the world. Without it
            # the tiny preset's ±20° novel views fell to 18.1 dB at step 1000 (23.0 with):
            # yawed rays that leave the canonical frustum ended on nothing, black.
            "far_backdrop": True,
            # Novel views for the novel-view D: yaw/pitch uniform in ±range about a pivot
            # on the optical axis at the canonical render's median depth (VQ3D §3.3).
            "novel_yaw_deg": 20.0,
            "novel_pitch_deg": 10.0,
            # Pictures: the orbit GIF's yaw amplitude and frame count.
            "orbit_yaw_deg": 25.0,
            "orbit_frames": 16,
            # eval/multiview_psnr: the render at this yaw warped into the canonical view
            # (the GAN heads' consistency figure); 0 = off (one render less per image).
            "multiview_yaw_deg": 20.0,
        }
    )
    c.loss.update(
        novel_adversarial=0.1,  # [choice] same as the main view's weight
        # Depth against pseudo-GT disparity (dataset depth on the synthetic scenes, a
        # monocular estimate on ImageNet; data/README.md). 'scale_shift' aligns it per
        # image by least squares (VQ3D §3.2); 'none' compares disparities as they are
        # (only right when the depth is metric in the model's units).
        depth_alignment="scale_shift",
        # 'disparity': |d − d*| (VQ3D §3.2's form); 'log_disparity': |log d − log d*|, a
        # relative error like AbsRel's (losses.disparity_error) [choice].
        depth_space="disparity",
        # [choice] Weights, with the depth decoder: on tiny at step 1000 (64 held-out
        # scenes) 1 / 1 / 2 scored 25.5 dB / AbsRel 0.090, 2 / 2 / 4 24.8 dB / 0.080.
        depth_pointwise=1.0,  # Σᵢ wᵢ·|disp(tᵢ) − target| ("weighted pointwise")
        depth_integrated=1.0,  # |rendered disparity − target|
        depth_lifted=2.0,  # |the splat's own disparity − target| (plane_lift=splat)
    )
    c.data.with_depth = True
    # Eval renders the dataset's held-out novel cameras (synthetic scenes only).
    c.data.with_novel_views = True

    if preset == "tiny":
        # The synthetic scenes' depth is metric and the model's camera stands at the
        # dataset's distance, so it is compared as it is: aligned per image, a flat
        # render makes the fitted slope 0 and the depth loss vanishes (measured: AbsRel
        # stayed at 0.43 over 500 tiny steps with 'scale_shift').
        c.loss.depth_alignment = "none"
        # Rendering dominates on a CPU (~2 µs per sample forward + backward): 8 images,
        # 32² renders and 12 + 12 samples keep a step near half a second on two cores.
        # The images are the 64² scenes downsampled to 32² and rendered at full size: a
        # 32² render upsampled ×2 capped reconstruction near 25 dB even on memorised
        # scenes; patch 4 keeps 8×8 = 64 tokens.
        c.global_batch_size = 8
        c.data.image_size = 32
        c.model.update(patch_size=4, encoder_variant="mu128", decoder_variant="mu128",
                       plane_resolution=64, plane_channels=16, nerf_hidden=32)
        c.render.update(resolution=32, num_samples=12, num_importance=12, orbit_frames=12,
                        train_rays=256)
        # A ball of radius 1/0.3 around the pivot holds 64 % of the visible surface (0.5:
        # 23 %); the rest of the ground runs to the horizon in the contracted shell.
        c.render.scene_scale = 0.3
        # [choice] 3e-3 at batch 8 (ViT-VQGAN's 1e-4 is for batch 256 over 500k steps).
        c.optim.generator.learning_rate = 3e-3
        # [choice] 1000 steps of the autoencoder alone (a quarter of the rays per step);
        # the discriminators join when a run is resumed past them. With both GANs from
        # step 100 a 300-step run scored 22.7 dB / AbsRel 0.147 / 18.8 dB novel against
        # 23.2 / 0.151 / 19.6 without: an untrained D only adds noise this early
        # (bench/results/README.md, 2026-11-29).
        c.total_steps = 1000
        c.loss.adversarial_start_step = 1000
        c.sample_every = 0  # pictures at the end only
    elif preset == "synthetic128":
        c.total_steps = 50_000
        c.global_batch_size = 32
        c.log_every = 100
        c.checkpoint_every = 2000
        c.eval_every = 5000
        c.sample_every = 2500
        c.model.update(
            encoder_variant="S",
            decoder_variant="S",
            codebook_size=1024,
            dtype="bfloat16",
            plane_resolution=128,
            disc_channel_base=8192,
            disc_channel_max=256,
        )
        c.render.update(resolution=128, num_samples=32, num_importance=32)
        c.loss.depth_alignment = "none"  # metric synthetic depth, as in tiny
        c.loss.adversarial_start_step = 5000
        c.optim.generator.update(learning_rate=4e-4, warmup_steps=1000)
        c.optim.discriminator.update(learning_rate=1e-4, warmup_steps=1000)
        c.data.update(name="synthetic_scenes/res128", image_size=128, worker_count=8)
        c.eval.update(num_examples=512, global_batch_size=64)
    elif preset == "imagenet256":
        # [choice] render 128² and upsample ×2: a quarter of the rays of a 256² render.
        c.data.update(name="imagenet2012_depth", with_novel_views=False)  # data/README.md
        c.render.camera_elevation_deg = 0.0  # [choice] photos taken roughly level
    return c
