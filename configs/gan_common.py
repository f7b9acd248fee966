"""What the 3D GAN configs share (`task = "gan"`: configs/gmpi.py, gmnr.py, eg3d.py,
mimic3d.py): the training poses, sampling, EMA and eval protocol, and the settings of
their `tiny` presets on the synthetic scenes. Every value the papers do not publish is
tagged [choice].
"""

import ml_collections

from configs import common


def gan_config(preset: str) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.task = "gan"
    c.preset = preset
    # Training poses: yaw/pitch truncated Gaussians on a sphere about the object, looking
    # at its centre (FFHQ: σ 0.289 / 0.127 rad, 2σ, FOV 12.6°, radius 1). `elevation_deg`:
    # the dataset cameras' mean elevation, from which real pitches are measured.
    c.camera = ml_collections.ConfigDict({
        "yaw_std": 0.289, "pitch_std": 0.127, "truncation": 2.0, "radius": 1.0,
        "fov_deg": 12.6, "elevation_deg": 0.0,
    })
    # `sample` writes 16-frame orbits; `--mode=render` videos of render_frames.
    c.sample = ml_collections.ConfigDict({"num_images": 8, "seed": 0, "psi": 0.7,
                                          "orbit_frames": 16, "render_frames": 48})
    # FID/KID/SWD of one sample per eval image at a pose drawn from the training
    # distribution ('sampled': novel views), or at the mean pose ('canonical').
    c.eval.pose = "sampled"
    c.data.with_cameras = True  # the real images' poses condition the discriminator
    return c


def at_scale(c: ml_collections.ConfigDict, dataset: str, image_size: int) -> None:
    """The cadence and eval protocol of the FFHQ/AFHQ presets (EG3D-format datasets built
    by data/prepare_eg3d.py: data/README.md)."""
    c.global_batch_size = 32
    c.log_every = 100
    c.checkpoint_every = 2000
    c.eval_every = 20_000
    c.sample_every = 5000
    # GAN FID is against the training images; x-flips mirror the cameras too.
    c.data.update(name=dataset, image_size=image_size, random_flip=True, eval_split="train")
    c.eval.update(num_examples=10_000, global_batch_size=64)  # [choice] FID-10k
    c.eval.swd.num_images = 10_000


def tiny_scenes(c: ml_collections.ConfigDict) -> None:
    """The `tiny` presets: the synthetic scenes at 32² on a CPU, minutes.

    Cameras ~6 units from the scene centre, yaw U(±10°), elevation 18 ± 3°
    (datasets/scenes.py). [choice] Every training scene's 6 held-out views (yaw ±10°/±20°,
    pitch ±10°) join as real images, one of the 7 drawn per example: yaw σ ≈ 13°, pitch
    σ ≈ 6° (with only the canonical views GMPI's depth stayed flat: bench/results/
    README.md, 2026-12-02).
    """
    c.total_steps = 2000
    c.global_batch_size = 8
    c.log_every = 50
    c.checkpoint_every = 500
    c.data.image_size = 32
    c.data.train_on_novel_views = True
    c.camera.update(yaw_std=0.23, pitch_std=0.1, truncation=2.0, radius=6.0, fov_deg=50.0,
                    elevation_deg=18.0)
    c.loss.views_per_z = 1  # [choice] CPU: one view per z
    c.ema.half_life_images = 2000  # [choice] ~250 steps at batch 8
    c.eval.update(num_examples=256, global_batch_size=32)
    c.eval.swd.num_images = 256  # the quality figure without Inception weights
