"""GMNR's view-dependent colour (Kumar et al., arXiv 2304.01172, §3.2 "α-VdR"): GMPI's
multiplane image with a colour change per plane pixel that depends on where the pixel
lies on its plane and on the direction it is seen from.

For a target-view pixel whose ray hits plane i at plane coordinates (u, v) ∈ [−1, 1]²:

    K = tanh(PositionMLP[γ₁₀(u, v), γ₈(d_i), w])   ∈ ℝ^{3×4}
    H = tanh(ViewMLP[γ₃(r_x, r_y), w])             ∈ ℝ⁴
    c' = clamp(c + K·H, 0, 1)

γ_F(x) = (sin, cos)(0.5π·2ᵏ x), k = 0..F−1, per component; r the unit ray direction in the
MPI's frame, d_i the plane's depth, w the sample's first style vector. PositionMLP is
56 + w_dim → 784 → 784 → 784 → 12, ViewMLP 12 + w_dim → 64 → 64 → 4, both lrelu(0.01)
(GMNR's code: RefineNetworkforrgb, Basis). [choice] d_i is GMPI's normalised depth in
[0, 1] (GMNR's code encodes the plane's raw distance, ~1 on FFHQ; the normalised depth
keeps the encoding's scale independent of the scene's units).

Each MLP's first layer reads [encoding, w]; it is computed as W_e·encoding + W_w·w with
W_w·w once per sample, the same affine map without repeating w for every pixel.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.nn.partitioning import partitioned

SLOPE = 0.01  # GMNR's MLPs' leaky ReLU


def sinusoidal_encoding(x: jax.Array, num_frequencies: int) -> jax.Array:
    """γ(x) = [sin(0.5π·2ᵏ x), cos(0.5π·2ᵏ x)], k = 0..F−1, x [..., D] → [..., 2·D·F]
    (all sines first, component-major within each, as GMNR's code)."""
    freqs = 0.5 * math.pi * 2.0 ** jnp.arange(num_frequencies, dtype=jnp.float32)
    angles = (x.astype(jnp.float32)[..., :, None] * freqs).reshape(x.shape[:-1] + (-1,))
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


class StyledMLP(nn.Module):
    """[encoding [N, E], w [w_dim]] → [N, out]: `depth` hidden lrelu layers of `width`."""

    width: int
    depth: int
    out: int

    @nn.compact
    def __call__(self, encoding: jax.Array, w: jax.Array) -> jax.Array:
        def dense(features, name, use_bias=True):
            return nn.Dense(features, use_bias=use_bias, name=name,
                            kernel_init=partitioned(nn.initializers.lecun_normal(),
                                                    ("conv_in", "conv_out")))

        x = dense(self.width, "encoding")(encoding) + dense(self.width, "style",
                                                            use_bias=False)(w)
        x = nn.leaky_relu(x, SLOPE)
        for i in range(self.depth - 1):
            x = nn.leaky_relu(dense(self.width, f"hidden{i}")(x), SLOPE)
        return dense(self.out, "out")(x)


class ViewDependentColor(nn.Module):
    """Δc = K·H at N plane hits of one sample: plane coordinates uv [N, 2] in [−1, 1],
    normalised plane depths [N], unit ray directions [N, 3] in the MPI frame, w [w_dim]
    → [N, 3]. Widths from GMNR (784 / 64); the tiny preset shrinks them."""

    position_width: int = 784
    view_width: int = 64
    position_frequencies: int = 10
    depth_frequencies: int = 8
    view_frequencies: int = 3

    @nn.compact
    def __call__(self, uv, depth, direction, w) -> jax.Array:
        position = jnp.concatenate([sinusoidal_encoding(uv, self.position_frequencies),
                                    sinusoidal_encoding(depth[:, None],
                                                        self.depth_frequencies)], -1)
        k = jnp.tanh(StyledMLP(self.position_width, 3, 12, name="position")(position, w))
        view = sinusoidal_encoding(direction[:, :2], self.view_frequencies)
        h = jnp.tanh(StyledMLP(self.view_width, 2, 4, name="view")(view, w))
        return jnp.einsum("nck,nk->nc", k.reshape(-1, 3, 4), h)
