"""VQ3D stage 1 (arXiv 2302.06833): one image → codes → contracted tri-plane NeRF → views.

The autoencoder is `VitVQGAN` (models/vit_vqgan.py): image → codes → tri-planes,
either as per-token plane patches (`decoder_head="triplane"`) or through an
image-aligned feature map with depth, lifted here (`lift_feature_map`). Here also:
the NeRF MLP, a separate module whose parameters are passed explicitly to
`render_view`, so the renderer's `lax.map` chunking and the per-image `vmap` stay
pure JAX.

Scene frame [choice; VQ3D does not say]: the canonical camera looks at the origin from
`distance` away, elevated like the dataset's camera (no roll; world up −y, OpenCV
frame), so the model's world is the scene's. World points are contracted
(mip-NeRF 360) around the origin, so content near the origin gets the tri-plane's
full resolution and the unbounded rest (ground to the horizon, sky) lives in the
contracted shell.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def canonical_camera(
    fov_deg: float, distance: float, size: int, elevation_deg: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Intrinsics and cam-to-world of the canonical view, looking at the origin.

    The camera stands `distance` from the origin, `elevation_deg` above the world's
    horizontal plane (world up is −y), with no roll: at elevation 0 it sits at
    (0, 0, −distance) facing +z with the world's axes. A dataset photographed from
    above (the synthetic scenes: 18°) gets the same elevation, so the model's world
    up is the scene's: yawing about it keeps the horizon level, and the ground lies
    along the zx plane.
    """
    elevation = np.deg2rad(elevation_deg)
    eye = distance * np.array([0.0, -np.sin(elevation), -np.cos(elevation)])
    cam_to_world = geo.look_at(jnp.asarray(eye, jnp.float32), jnp.zeros(3, jnp.float32))
    return geo.intrinsics_from_fov(fov_deg, size, size), cam_to_world


def lift_feature_map(
    feature_map: jax.Array,
    intrinsics: jax.Array,
    cam_to_world: jax.Array,
    *,
    scene_scale: float,
    near: float,
    fill: str = "none",
) -> tuple[jax.Array, jax.Array]:
    """One image-aligned map [R, R, 3C + 1] → (tri-planes [3, R, R, C], disparity [R, R]).

    [choice] The decoder predicts, per pixel of the canonical view (at the planes'
    resolution), a disparity in (0, 1/near) (sigmoid of the last channel; 0 = sky) and
    C features for each plane; each pixel's point at that depth on its canonical ray is
    contracted and splatted bilinearly into the xy, yz and zx planes
    (`geo.splat_to_triplane`); a texel keeps the weighted mean of what landed on it,
    scaled down where less than one pixel's weight did. Content thus starts where the
    image says it is, instead of at the texels a token happens to own: with per-token
    plane patches ('tokens') a pixel's surface point fell on its own token's texels for
    5 % of pixels on xy and 1 % on yz and zx, and the decoder had to learn that routing
    before it passed any image content (bench/results/README.md, stage-1 learning).
    `intrinsics` are the canonical camera's at the map's resolution.

    `fill='pull_push'` [choice] fills the texels nothing landed on from coarser averages of
    what did (`geo.pull_push_fill`) instead of leaving them 0. Without it, every ray of a
    yawed view that leaves the canonical frustum (the far field at the image's sides, the
    ground behind an object) reads all-zero features, one constant colour: the pink wedge
    that cost the tiny preset ~1.5 dB of ±20° novel-view PSNR (bench/results/README.md).
    """
    res = feature_map.shape[0]
    channels = (feature_map.shape[-1] - 1) // 3
    disparity = jax.nn.sigmoid(feature_map[..., -1].astype(jnp.float32)) / near
    origins, directions = geo.pixel_rays(intrinsics, cam_to_world, res, res)
    # Rays have camera z = 1, so the ray parameter is the depth 1/disparity.
    points = origins + directions / jnp.maximum(disparity, 1e-6)[..., None]
    coords = geo.contract_to_unit(points * scene_scale).reshape(-1, 3)
    features = feature_map[..., :-1].astype(jnp.float32).reshape(-1, 3, channels)
    sums, weights = geo.splat_to_triplane(coords, features, res)
    if fill == "none":  # the texel's weighted mean, scaled down where less than one landed
        return sums / jnp.maximum(weights, 1.0)[..., None], disparity
    if fill == "pull_push":
        means = sums / jnp.where(weights > 0, weights, 1.0)[..., None]
        return geo.pull_push_fill(means, jnp.minimum(weights, 1.0)), disparity
    raise ValueError(f"plane fill {fill!r}: 'none' or 'pull_push'.")


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
    *,
    height: int,
    width: int,
    near: float,
    far: float,
    num_samples: int,
    num_importance: int,
    scene_scale: float = 1.0,
    randomized: bool = True,
    background: jax.Array | None = None,
    chunk_size: int | None = None,
    pixels: jax.Array | None = None,
    far_backdrop: bool = False,
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
        near=near,
        far=far,
        num_samples=num_samples,
        num_importance=num_importance,
        randomized=randomized,
        background=background,
        chunk_size=chunk_size,
        far_backdrop=far_backdrop,
    )
