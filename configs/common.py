"""Pieces every experiment config shares: mesh, logical-axis rules, loop cadence.

Config files are data (big_vision): each `get_config(arg)` returns a locked
`ml_collections.ConfigDict`; an unknown `--config.key` fails before anything
compiles, naming the key.
"""

import ml_collections

# Logical axis name → mesh axes. Parameters: width ('embed') is fsdp-sharded,
# MLP hidden and attention heads are split Megatron-style over 'tensor'.
# Activations: batch over ('data', 'fsdp'); the rest follow the weights.
LOGICAL_AXIS_RULES = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("codebook", None),
    ("code", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("norm", None),
    # The NeRF MLP is tiny: replicated.
    ("mlp_in", None),
    ("mlp_hidden", None),
    ("mlp_out", None),
)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = ""
    c.seed = 0
    c.total_steps = 1000
    c.global_batch_size = 16
    # Micro-batches per optimizer update (train/accumulation.py): the step computes its
    # gradients global_batch_size / grad_accum_steps examples at a time, for a preset
    # whose batch does not fit a smaller slice. Same update, to float rounding.
    c.grad_accum_steps = 1
    c.log_every = 10
    # A NaN/inf loss, gradient norm or updated state (train/nonfinite.py): "stop" the run at
    # that step, nothing of it saved; or "skip" the update (the state stays as it was,
    # counted in train/skipped_steps and logged with its step). "skip" holds one more
    # copy of the state in device memory while the step decides.
    c.nonfinite = "stop"
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    # Every N steps and at the end of training; 0 = only at the end, -1 = never (runs that
    # only train, e.g. smoke or throughput runs).
    c.eval_every = 0
    c.sample_every = 0
    # -1 = all remaining devices. A TPU pod / GPU cluster sets e.g. fsdp=8.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.sharding = ml_collections.ConfigDict(
        {
            "logical_axis_rules": LOGICAL_AXIS_RULES,
            # Unannotated parameters larger than this are fsdp-sharded on their
            # largest divisible dimension.
            "fallback_min_mb": 4.0,
        }
    )
    c.data = ml_collections.ConfigDict(
        {
            "name": "synthetic_scenes/res64",  # TFDS name[/config]
            "data_dir": "",  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
            "train_split": "train",
            "eval_split": "validation",
            "image_size": 64,
            "random_flip": False,
            "worker_count": 0,
            "prefetch_buffer_size": 2,
            "with_depth": False,
            "with_novel_views": False,
            # Training reads the held-out novel views too (of the training split), as
            # more real images: for the 3D GANs, whose D wants a wide pose range.
            "train_on_novel_views": False,
        }
    )
    c.eval = ml_collections.ConfigDict({"num_examples": 256, "global_batch_size": 32})
    # FID / KID / IS of the task's fid_images (stage 1: reconstructions) on the eval
    # split, in the same pass as the other eval metrics (metrics/evaluator.py).
    c.eval.fid = ml_collections.ConfigDict(
        {
            # Converted pytorch-fid Inception weights (tools/convert_weights.py);
            # '' = FID off, said once at start-up. Never downloaded.
            "inception_weights": "",
            # A reference .npz (mu/sigma, or raw features) to score against; '' = the
            # eval split's own statistics, computed once and cached under cache_dir.
            "reference": "",
            "cache_dir": "",  # '' = ~/.cache/vq3d_jax/fid_reference
            "kid_subsets": 100,  # KID: 100 subsets of 1000 (Bińkowski et al. §3)
            "kid_subset_size": 1000,
            "kid_max_features": 10_000,  # rows kept per set for KID and IS (host memory)
        }
    )
    # Sliced Wasserstein distance (ProGAN §5; metrics/swd.py) of the task's fid_images
    # against the split's images: needs no downloaded network. 0 = off.
    c.eval.swd = ml_collections.ConfigDict({"num_images": 0})
    return c
