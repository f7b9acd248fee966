"""VQ3D stage 2 (Sargent et al., arXiv 2302.06833 §3.4): a class-conditional AR prior over codes.

A decoder-only transformer over a stage-1 run's code indices (raster order),
conditioned on a class token; `stage1.workdir` names that run (its config.json
and newest checkpoint: codebook size, token grid, encoder, decoder, NeRF).

Presets: tiny (CPU, minutes, on a tiny stage-1 run) | imagenet256_base
(24L/1024/16 heads) | imagenet256_large (36L/1536/24 heads); sizes from
ViT-VQGAN's stage 2 (arXiv 2110.04627 §4). Usage:
  --config=configs/vq3d_stage2.py:tiny --config.stage1.workdir=DIR
Every value the papers do not publish is tagged [choice].
"""

import ml_collections

from configs import common

PRESETS = ("tiny", "imagenet256_base", "imagenet256_large")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    c = common.base_config()
    c.task = "vq3d_stage2"
    c.preset = preset
    c.stage1 = ml_collections.ConfigDict({"workdir": ""})
    c.prior = ml_collections.ConfigDict(
        {
            "size": "base",  # models/ar_prior.py:PRESETS
            # Codebook size and sequence length; 0 = the stage-1 run's (given, they must
            # match it). Set both to train on precomputed codes without a stage-1 run.
            "vocab_size": 0,
            "length": 0,
            "num_classes": 1000,  # class tokens; index num_classes is the null class
            "class_dropout": 0.1,  # [choice] P(label → null): the unconditional mode
            "dtype": "bfloat16",  # compute dtype; params stay float32
            "remat": False,
            "attention_impl": "",  # '' = XLA; 'cudnn' = fused flash attention on GPU
        }
    )
    # [choice] GPT-style AdamW: β (0.9, 0.95), decay 0.01 on matrices, clip 1.
    c.optim = ml_collections.ConfigDict(
        {
            "learning_rate": 4.5e-4,
            "warmup_steps": 5000,
            "decay": "cosine",
            "b1": 0.9,
            "b2": 0.95,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
        }
    )
    c.sample = ml_collections.ConfigDict(
        {
            "num_images": 8,  # --mode=sample: samples (≤ eval.global_batch_size)
            "seed": 0,  # sample i draws with fold_in(key(seed), i): reproducible
            "temperature": 1.0,
            "top_k": 0,  # 0 = off
            "top_p": 1.0,  # 1 = off
            # -1: each eval image's label (the split's class mix); k: class k;
            # num_classes: the null class (unconditional samples).
            "class_label": -1,
            # Classifier-free guidance, beyond the paper: 1 = off (plain conditional).
            "guidance_scale": 1.0,
            # Decode-loop spans; a step reads only the cache up to its span's end.
            "cache_segments": 8,
        }
    )
    # Images (and labels) for encoding on the fly, eval and FID; codes_dir, when set,
    # is a dataset of precomputed codes (--mode=codes) that training reads.
    c.data.update(with_depth=False, with_novel_views=False)
    c.data.codes_dir = ""

    if preset == "tiny":
        # On the tiny stage-1 run: 32² synthetic scenes, patch 4 → 64 codes of 512.
        c.data.image_size = 32
        c.total_steps = 600
        c.global_batch_size = 32
        c.log_every = 20
        c.checkpoint_every = 200
        c.prior.update(size="tiny", num_classes=4, dtype="float32")  # the scenes' 4 shapes
        c.optim.update(learning_rate=1e-3, warmup_steps=50)
        c.sample.cache_segments = 2
        c.eval.update(num_examples=64, global_batch_size=16)
    else:
        # [choice] ImageNet 256², 1000 classes; stage 1 is an imagenet256 run.
        c.total_steps = 450_000
        c.global_batch_size = 512
        c.log_every = 100
        c.checkpoint_every = 5000
        c.eval_every = 50_000
        c.data.update(name="imagenet2012", image_size=256, random_flip=True, worker_count=8)
        c.eval.update(num_examples=50_000, global_batch_size=256)
        c.prior.update(size="base" if preset == "imagenet256_base" else "large",
                       attention_impl="cudnn")
        if preset == "imagenet256_large":
            c.prior.remat = True  # 36 × 1536: activations of 1024 tokens dominate memory
    return c
