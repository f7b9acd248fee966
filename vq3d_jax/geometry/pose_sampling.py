"""Training cameras of the 3D GANs: on a sphere about the object, looking at its centre,
yaw and pitch from truncated Gaussians (GMPI §4 / ml-gmpi's "truncated_gaussian" poses).

The reference (canonical) camera is the identity pose moved back along +z so that the
sphere's centre sits at z = `center_depth` in front of it at distance `radius`; a
sampled camera is the reference orbited about that centre by (yaw, pitch)
(`cameras.orbit`: yaw about world up, pitch about the camera's x axis). With
`radius = center_depth` the reference camera is the identity, as in ml-gmpi (FFHQ:
centre and radius 1; AFHQ: 2.7).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vq3d_jax.geometry.cameras import orbit


@dataclasses.dataclass(frozen=True)
class PoseDistribution:
    """Yaw/pitch N(mean, std²) (radians) truncated at ±`truncation` stds, on a sphere."""

    yaw_std: float
    pitch_std: float
    truncation: float
    radius: float = 1.0
    center_depth: float = 1.0
    yaw_mean: float = 0.0
    pitch_mean: float = 0.0

    def reference_camera(self) -> jax.Array:
        """The canonical cam-to-world [4, 4]: looking down +z at the sphere's centre."""
        return jnp.eye(4).at[2, 3].set(self.center_depth - self.radius)

    def center(self) -> jax.Array:
        return jnp.asarray([0.0, 0.0, self.center_depth])


def sample_yaw_pitch(rng: jax.Array, batch: int, dist: PoseDistribution) -> jax.Array:
    """[batch, 2] (yaw, pitch) in radians."""
    unit = jax.random.truncated_normal(rng, -dist.truncation, dist.truncation, (batch, 2))
    return (jnp.asarray([dist.yaw_mean, dist.pitch_mean])
            + unit * jnp.asarray([dist.yaw_std, dist.pitch_std]))


def cameras_at(yaw_pitch: jax.Array, dist: PoseDistribution) -> jax.Array:
    """(yaw, pitch) [..., 2] → cam-to-world [..., 4, 4] on the distribution's sphere."""
    reference = jnp.broadcast_to(dist.reference_camera(), yaw_pitch.shape[:-1] + (4, 4))
    return orbit(reference, dist.center(), yaw_pitch[..., 0], yaw_pitch[..., 1])


def sample_cameras(rng: jax.Array, batch: int, dist: PoseDistribution):
    """→ (cam-to-world [batch, 4, 4], their (yaw, pitch) [batch, 2])."""
    yaw_pitch = sample_yaw_pitch(rng, batch, dist)
    return cameras_at(yaw_pitch, dist), yaw_pitch
