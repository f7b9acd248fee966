"""Test set-up: 8 simulated CPU devices, set before jax is first imported."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Grain worker processes and absl logging read parsed flags.
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
