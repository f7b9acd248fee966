"""A tri-plane radiance field and its per-view render (EG3D §4; VQ3D, EG3D and Mimic3D).

`NeRFMLP` decodes summed tri-plane features into density and colour; `triplane_field`
looks a world point up in one image's planes (after mip-NeRF 360 contraction);
`render_view` renders those planes from one camera. The MLP's parameters are passed
explicitly, so the renderer's `lax.map` chunking and the per-image `vmap` stay pure JAX.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax import geometry as geo
from vq3d_jax.nn.partitioning import partitioned

Dtype = Any


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


def triplane_field(mlp: NeRFMLP, mlp_params, planes: jax.Array, scene_scale: float = 1.0):
    """World points [..., 3] → (σ [...], colour/features [..., C]) of one image's tri-plane.

    Points are scaled to the model's units, contracted into [−1, 1]³
    (mip-NeRF 360 eq. 10, halved) and looked up on the xy, yz and zx planes;
    the features are summed (EG3D §4 aggregates the three planes) and decoded
    by the MLP. σ is per world unit: contraction changes where texels sit, not
    the density's units.
    """

    def field(points):
        coords = geo.contract_to_unit(points * scene_scale)
        features = geo.triplane_features(planes, coords, reduce="sum")
        density, color = mlp.apply({"params": mlp_params}, features)
        return density, color

    return field


def render_view(
    mlp: NeRFMLP,
    mlp_params,
    planes: jax.Array,
    intrinsics: jax.Array,
    cam_to_world: jax.Array,
    rng: jax.Array,
    options: geo.RenderOptions,
    *,
    height: int,
    width: int,
    scene_scale: float = 1.0,
    background: jax.Array | None = None,
    pixels: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Renders one image's tri-plane from one camera → maps [H, W, ...] (colour in [0, 1]).

    `pixels` [N] (flat indices into the H×W grid) renders only those rays: maps [N, ...].
    Batch it with `jax.vmap` over (planes, intrinsics, cam_to_world, rng[, pixels]).
    """
    origins, directions = geo.pixel_rays(intrinsics, cam_to_world, height, width)
    if pixels is not None:
        origins, directions = origins.reshape(-1, 3)[pixels], directions.reshape(-1, 3)[pixels]
    return geo.render_rays(
        triplane_field(mlp, mlp_params, planes, scene_scale),
        origins,
        directions,
        rng,
        options,
        background,
    )
