"""Test set-up: 8 simulated CPU devices, set before jax is first imported."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Grain worker processes and absl logging read parsed flags.
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mini_data_dir(tmp_path_factory):
    """The `mini` synthetic scenes (32², 128/32/32 scenes), built once per session."""
    from vq3d_jax.datasets import synthetic_scenes

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    synthetic_scenes.ensure_built("synthetic_scenes/mini", data_dir)
    return data_dir


def tiny_overrides(data_dir: str) -> dict:
    """The CLI/loop tests' shrunken `tiny` preset: 32² images, GAN on from step 0."""
    return {
        "data.name": "synthetic_scenes/mini",
        "data.data_dir": data_dir,
        "data.image_size": 32,
        "global_batch_size": 8,
        "eval.num_examples": 16,
        "eval.global_batch_size": 8,
        "loss.adversarial_start_step": 0,
        "model.codebook_size": 64,
        "model.disc_channel_base": 256,
        "model.disc_channel_max": 32,
    }
