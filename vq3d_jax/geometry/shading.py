"""GMPI's shading augmentation (Zhao et al., arXiv 2207.10642, §3.4): the MPI's colours
lit by a random light through normals of its own (blurred) depth, so that the generator
cannot paint shading onto a flat geometry that the discriminator would accept.

In the MPI's reference frame (x right, y down, z forward; ``mpi`` module docstring):

1. depth D = Σ w_i d_i of the planes' alphas composited from the reference camera;
2. D blurred by a k×k Gaussian (σ = 0.3((k − 1)/2 − 1) + 0.8, OpenCV's rule for a
   given size; ml-gmpi: k = 9, reflected edges, as torchvision's GaussianBlur);
3. a point per back-plane texel, its centre ray scaled to depth D;
4. normals: the sum of the four cross products of neighbour differences around each
   point (up×left, left×down, down×right, right×up), edges replicated, unit length; a
   plane facing the camera gets n = (0, 0, −1);
5. shading ka + kd·max(0, −n·l), l the unit light direction (from the light towards the
   object); GMPI multiplies the colours by it and clips to [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vq3d_jax.geometry.precision import at_least_float32


def gaussian_blur(images: jax.Array, kernel_size: int = 9) -> jax.Array:
    """[..., H, W] blurred by a separable k×k Gaussian, edges reflected (no edge repeat)."""
    x = at_least_float32(images)
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1.0) + 0.8
    offsets = jnp.arange(kernel_size, dtype=x.dtype) - (kernel_size - 1) / 2
    taps = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / jnp.sum(taps)
    half = kernel_size // 2
    pad = [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad + [(half, half), (0, 0)], mode="reflect")
    x = sum(taps[i] * x[..., i:i + x.shape[-2] - 2 * half, :] for i in range(kernel_size))
    x = jnp.pad(x, pad + [(0, 0), (half, half)], mode="reflect")
    return sum(taps[i] * x[..., i:i + x.shape[-1] - 2 * half] for i in range(kernel_size))


def normals_from_points(points: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Unit normals [..., H, W, 3] of a grid of points [..., H, W, 3] (step 4 above)."""
    p = at_least_float32(points)
    center = p[..., 1:-1, 1:-1, :]
    up, down = p[..., :-2, 1:-1, :] - center, p[..., 2:, 1:-1, :] - center
    left, right = p[..., 1:-1, :-2, :] - center, p[..., 1:-1, 2:, :] - center
    n = (jnp.cross(up, left) + jnp.cross(left, down) + jnp.cross(down, right)
         + jnp.cross(right, up))
    pad = [(0, 0)] * (p.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    n = jnp.pad(n, pad, mode="edge")
    return n / (jnp.linalg.norm(n, axis=-1, keepdims=True) + eps)


def mpi_points(alpha: jax.Array, depths, back_half_extent) -> jax.Array:
    """Alphas [..., P, H, W] (front to back, the reference camera's view) → the points
    [..., H, W, 3] of steps 1–3: each back-plane texel's centre ray at the blurred depth."""
    alpha = at_least_float32(alpha)
    depths = at_least_float32(depths).astype(alpha.dtype)
    survive = jnp.cumprod(1.0 - alpha, axis=-3)
    transmittance = jnp.concatenate([jnp.ones_like(alpha[..., :1, :, :]),
                                     survive[..., :-1, :, :]], axis=-3)
    depth = jnp.sum(alpha * transmittance * depths[:, None, None], axis=-3)
    depth = gaussian_blur(depth)
    h, w = alpha.shape[-2:]
    half = at_least_float32(back_half_extent).astype(alpha.dtype)
    xs = -half[0] + (jnp.arange(w, dtype=alpha.dtype) + 0.5) * 2.0 * half[0] / w
    ys = -half[1] + (jnp.arange(h, dtype=alpha.dtype) + 0.5) * 2.0 * half[1] / h
    grid = jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None],
                                          jnp.broadcast_to(depths[-1], (h, w))), -1)
    return grid * (depth / depths[-1])[..., None]


def lambertian(normals: jax.Array, light_direction: jax.Array, ka, kd) -> jax.Array:
    """ka + kd·max(0, −n·l): normals [..., H, W, 3], unit light directions [..., 3]."""
    cosine = -jnp.sum(normals * light_direction[..., None, None, :], axis=-1)
    return ka + kd * jnp.maximum(cosine, 0.0)


@dataclasses.dataclass(frozen=True)
class Light:
    """One light per sample: unit `direction` [B, 3] (towards the object), the ambient
    and diffuse terms, and `strength` in [0, 1], the ramp-in (0: no shading)."""

    direction: jax.Array
    ka: float
    kd: float
    strength: jax.Array | float = 1.0


def shade_mpi(rgb: jax.Array, alpha: jax.Array, depths, back_half_extent,
              light: Light) -> jax.Array:
    """GMPI's MPI colours [B, H, W, 3] (one image for all planes) lit per sample:
    rgb · (1 + s·(shading − 1)), clipped to [0, 1]; alphas [B, P, H, W]. [choice] The
    ramp blends from unshaded (s = 0) to GMPI's full shading (s = 1); the light renderer
    GMNR's code ships ramps ka and kd themselves up from 0, so its first shaded images
    are black."""
    normals = normals_from_points(mpi_points(alpha, depths, back_half_extent))
    shading = lambertian(normals, light.direction, light.ka, light.kd)
    factor = 1.0 + jnp.asarray(light.strength, jnp.float32) * (shading - 1.0)
    return jnp.clip(rgb * factor[..., None], 0.0, 1.0)
