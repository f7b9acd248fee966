"""Mimic3D (Chen et al., arXiv 2303.09036): EG3D with 3D-aware convolutions across the
tri-plane (stage 1), then 3D super-resolution to detail planes that render high
resolution directly, taught by imitating the 2D super-resolution (LPIPS) and by a patch
discriminator (stage 2). The stages are two runs, as in the official code: stage 2
starts from a stage-1 run's networks (`--config.stage1.workdir`); the detail planes and
the patch discriminator start fresh. Its samples, evals and renders come from the coarse
+ detail planes at full resolution, with no 2D super-resolution.

Presets: tiny / tiny_stage2 (CPU, synthetic scenes at 32²); ffhq512 / ffhq512_stage2,
afhqcats512 / afhqcats512_stage2 (the official configs `ffhq512_2d.yaml`/`_3d.yaml`,
`afhq512_2d.yaml`/`_3d.yaml`, commit 77d3136, on top of configs/eg3d.py's EG3D settings).
The stage-2 imitation loss is LPIPS: the at-scale stage-2 presets refuse to start without
`--config.loss.lpips_weights` (README: FID, KID and LPIPS); `tiny_stage2` imitates with
L1 and says so. Usage:
  --config=configs/mimic3d.py:tiny --workdir=W1
  --config=configs/mimic3d.py:tiny_stage2 --config.stage1.workdir=W1 --workdir=W2
"""

import ml_collections

from configs import eg3d

STAGE1 = eg3d.PRESETS
PRESETS = STAGE1 + tuple(f"{p}_stage2" for p in STAGE1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    base = preset.removesuffix("_stage2")
    c = eg3d.get_config(base)
    c.preset = preset
    t = c.model.triplane
    # aware3d_res [4, 8, ..., 256]: the 3D branch at every backbone resolution.
    t.conv3d_resolutions = tuple(2**k for k in range(2, 9))
    if base == "tiny":
        t.conv3d_resolutions = (8, 16, 32)  # [choice] from 8² to the 32² planes
    if base == "afhqcats512":
        c.loss.pose_swap_probability = 0.5  # Mimic3D keeps gpc_reg_prob's default
    if preset == base:
        # Stage 1: EG3D's training with the 3D branch (kimg of the released snapshots:
        # 20,800 FFHQ; 4,000 AFHQ, fine-tuned from FFHQ's).
        if base == "ffhq512":
            c.total_steps = 20_800_000 // 32
        elif base == "afhqcats512":
            c.total_steps = 4_000_000 // 32
        return c
    # Stage 2: the 3D super-resolution's 512² detail planes; LPIPS imitation (weight 1)
    # of 64² windows of the virtual 512² image (patch_scale 0.125); the patch D at weight
    # 0.1 (patch_gan) with R1 γ 1 (gamma_patch; 5 on AFHQ); density offset 0.002
    # (density_reg_p_dist of the 3d configs); no blur fade-in or pose-swap fade on a
    # resumed run (EG3D's resume settings).
    t.detail_planes = True
    c.loss.update(imitation=1.0, patch_size=64, patch_adversarial=0.1, patch_r1_gamma=1.0,
                  require_lpips=True, density_reg_offset=0.002, blur_sigma=0.0,
                  pose_swap_fade_images=0)
    c.ema.rampup = 0.0  # a resumed run keeps stage 1's EMA (train.py: ema_rampup=None)
    if base == "ffhq512":
        c.total_steps = 17_000_000 // 32  # the released stage-2 snapshot's kimg
    elif base == "afhqcats512":
        c.total_steps = 6_200_000 // 32
        c.loss.patch_r1_gamma = 5.0
    else:
        # [choice] 16² windows of the 32² image (patch_scale 0.5; at scale 0.125 of 512²);
        # L1 imitation: no LPIPS weights needed; 500 steps after stage 1's 2000.
        c.loss.update(patch_size=16, require_lpips=False)
        c.total_steps = 500
    return c
