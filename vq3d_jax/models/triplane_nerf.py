"""VQ3D's NeRF decoder pieces: quantized tokens → contracted tri-plane → NeRF MLP.

VQ3D (arXiv 2302.06833) replaces ViT-VQGAN's pixel head with a conditional
NeRF on a contracted tri-plane. The decoder details are not published; ours
[choice, SPECS.md]: the same ViT decoder trunk over the token grid, then a
per-token linear projection into a q×q patch of each of the three planes
(xy, yz, zx), so a G×G token grid yields 3 planes of (G·q)² texels × C
channels. Planes are channels-last: [B, 3, R, R, C].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.models.vit_vqgan import decoder_trunk, token_head, unpatchify
from vq3d_jax.nn.vit import partitioned

Dtype = Any


def tokens_to_planes(x: jax.Array, q: int, channels: int) -> jax.Array:
    """[B, G·G, 3·q·q·C] → [B, 3, G·q, G·q, C]: token (i, j) owns texels [iq:(i+1)q, jq:(j+1)q].

    Per plane a depth-to-space, as the 2D decoder does for pixels.
    """
    b, t, _ = x.shape
    grid = int(round(t**0.5))
    r = grid * q
    x = x.reshape(b, t, 3, q * q * channels)
    return jnp.stack([unpatchify(x[:, :, k], q, r, r, channels) for k in range(3)], axis=1)


class TriplaneDecoder(nn.Module):
    """Tokens [B, G·G, width] → tri-plane features [B, 3, R, R, C] float32, R = G·q."""

    variant: str
    plane_resolution: int = 256
    plane_channels: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        grid = int(round(tokens.shape[1] ** 0.5))
        r, c = self.plane_resolution, self.plane_channels
        if grid * grid != tokens.shape[1] or r % grid:
            raise ValueError(
                f"{tokens.shape[1]} tokens must form a square grid dividing the plane "
                f"resolution {r}."
            )
        q = r // grid
        x = token_head(self, decoder_trunk(self, tokens, grid), 3 * q * q * c, "to_planes")
        return tokens_to_planes(x.astype(jnp.float32), q, c)


class NeRFMLP(nn.Module):
    """Plane features [..., C] → (density σ ≥ 0, colour or features) (EG3D §4 decoder).

    Hidden layers with softplus; σ = softplus(raw + density_bias) (EG3D uses a
    bias of −1 so empty space starts transparent); colour = sigmoid·(1 + 2ε) − ε
    (EG3D's widened sigmoid, so 0 and 1 are reachable with finite logits).
    """

    hidden: int = 64
    num_layers: int = 2
    out_features: int = 3
    density_bias: float = -1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = features.astype(self.dtype)
        for i in range(self.num_layers):
            x = nn.Dense(
                self.hidden,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp_in", "mlp_hidden")),
                bias_init=partitioned(nn.initializers.zeros, ("mlp_hidden",)),
                name=f"hidden_{i}",
            )(x)
            x = nn.softplus(x)
        out = nn.Dense(
            1 + self.out_features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp_hidden", "mlp_out")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp_out",)),
            name="out",
        )(x).astype(jnp.float32)
        density = jax.nn.softplus(out[..., 0] + self.density_bias)
        eps = 1e-3
        color = jax.nn.sigmoid(out[..., 1:]) * (1.0 + 2.0 * eps) - eps
        return density, color
