"""GMPI's generator (Zhao et al., arXiv 2207.10642, §3.2): StyleGAN2 + depth-conditioned
alpha planes, i.e. a multiplane image (one shared RGB image, one alpha map per plane).

On top of the StyleGAN2 skip synthesis (models/stylegan2.py), at every resolution
r ≤ `alpha_max_resolution` the block's features x give plane i the alpha logits

    α_i = ToAlpha( InstanceNorm(x) + E(d_i) ),

d_i the plane's depth normalised to [0, 1] and E four modulated 1×1 convolutions without
demodulation (lrelu; C/4 → C/2 → C → C channels, styled by the block's second w), ToAlpha
a modulated 1×1 conv (no demodulation) to one channel styled by the block's toRGB w; the
per-plane logits accumulate through the skip path like the RGB image, and above
`alpha_max_resolution` they are only upsampled. RGB and alphas are (tanh(·) + 1)/2; the
last (background) plane's alpha is 1. As in ml-gmpi's defaults ("normalize_add_z",
"modulated_lrelu", `pos_enc_multires` 0: E reads d_i itself).

ToAlpha is linear in its input, so ToAlpha(InstanceNorm(x) + E(d_i)) = ToAlpha(
InstanceNorm(x)) + ToAlpha₀(E(d_i)) (ToAlpha₀: without bias): one shared map plus one
scalar per plane, computed without the [B, P, r, r, C] tensor (8.6 GB at 256², 32
planes, batch 8).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax import geometry as geo
from vq3d_jax.geometry import pose_sampling, shading
from vq3d_jax.models.gmnr import ViewDependentColor
from vq3d_jax.models.stylegan2 import Generator, channels_at
from vq3d_jax.nn.partitioning import partitioned
from vq3d_jax.nn.stylegan import EqualDense, ModulatedConv2d, lrelu, upsample2d

Dtype = Any


def instance_norm(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Per sample and channel: zero mean, unit std over the spatial axes (NHWC, float32)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    std = jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + eps)
    return (x - mean) / std


class DepthEmbedding(nn.Module):
    """E: normalised plane depths [P] → per-sample plane embeddings [B, P, C] (4 modulated
    1×1 convs without demodulation, bias and lrelu; styles from w [B, w_dim])."""

    features: int

    @nn.compact
    def __call__(self, depths: jax.Array, w: jax.Array) -> jax.Array:
        b, p = w.shape[0], depths.shape[0]
        # The planes stand in for a spatial axis: [B, P, 1, 1], one style per sample.
        x = jnp.broadcast_to(depths.astype(jnp.float32)[None, :, None, None], (b, p, 1, 1))
        c = self.features
        for i, width in enumerate((c // 4, c // 2, c, c)):
            x = ModulatedConv2d(width, 1, demodulate=False, name=f"conv{i}")(x, w)
            bias = self.param(f"bias{i}", partitioned(nn.initializers.zeros, ("conv_out",)),
                              (width,), jnp.float32)
            x = lrelu(x + bias)
        return x[:, :, 0, :]


class PlaneAlphas(nn.Module):
    """ToAlpha(InstanceNorm(x) + E_i) for every plane → logits [B, P, r, r, 1], by the
    linearity of a 1×1 modulated conv without demodulation (module docstring)."""

    @nn.compact
    def __call__(self, x: jax.Array, embeddings: jax.Array, w: jax.Array) -> jax.Array:
        c = x.shape[-1]
        styles = EqualDense(c, bias_init=1.0, activation=None, name="affine")(w)  # [B, C]
        kernel = self.param("kernel", partitioned(nn.initializers.normal(1.0),
                                                  ("conv_in", None)), (c, 1), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (1,), jnp.float32)
        kernel = kernel / math.sqrt(c)
        shared = jnp.einsum("bhwc,bc,co->bhwo", instance_norm(x), styles, kernel)
        per_plane = jnp.einsum("bpc,bc,co->bpo", embeddings.astype(jnp.float32), styles, kernel)
        return shared[:, None] + per_plane[:, :, None, None, :] + bias


class GMPIGenerator(Generator):
    """z [B, z_dim] and normalised plane depths [P] (front to back) → an MPI:
    {'rgb': [B, R, R, 3] in [0, 1], 'alpha': [B, P, R, R, 1] in [0, 1], last plane 1}.

    `stylegan2.Generator` with the alpha branch: ``__call__(z, depths, psi=, w_average=)``,
    ``synthesis(ws, depths)``. Any number of planes P (32 in training, 96 at inference):
    E and ToAlpha are shared by all planes. With `view_color` (GMNR), also
    ``view_dependent_color(uv, depths, directions, w)``: the Δc of models/gmnr.py.
    """

    alpha_max_resolution: int = 256
    view_color: ViewDependentColor | None = None

    def setup(self):
        super().setup()
        top = min(self.resolution, self.alpha_max_resolution)
        self.alpha_resolutions = tuple(2**k for k in range(2, int(math.log2(top)) + 1))
        self.depth_embedding = {
            str(r): DepthEmbedding(channels_at(r, self.channel_base, self.channel_max))
            for r in self.alpha_resolutions}
        self.to_alpha = {str(r): PlaneAlphas() for r in self.alpha_resolutions}

    def synthesis(self, ws: jax.Array, depths: jax.Array) -> dict[str, jax.Array]:
        rgb, features = super().synthesis(ws, with_features=True)
        logits = None
        for i, res in enumerate(sorted(features)):
            # The block's last conv's w styles E; its toRGB w styles ToAlpha (the
            # synthesis's layout: 4² takes ws[0:2], resolution k ≥ 1 above ws[2k−1:2k+2]).
            w_conv, w_rgb = ws[:, 2 * i], ws[:, 2 * i + 1]
            if logits is not None:
                b, p = logits.shape[:2]
                up = upsample2d(logits.reshape((b * p,) + logits.shape[2:]))
                logits = up.reshape((b, p) + up.shape[1:])
            if res in self.alpha_resolutions:
                embedding = self.depth_embedding[str(res)](depths, w_conv)
                new = self.to_alpha[str(res)](features[res], embedding, w_rgb)
                logits = new if logits is None else logits + new
        alpha = (jnp.tanh(logits) + 1.0) / 2.0
        alpha = alpha.at[:, -1].set(1.0)  # the background plane is opaque
        return {"rgb": (jnp.tanh(rgb) + 1.0) / 2.0, "alpha": alpha}

    def view_dependent_color(self, uv, depths, directions, w) -> jax.Array:
        return self.view_color(uv, depths, directions, w)

    def initialize(self, z: jax.Array, depths: jax.Array) -> None:
        """Touches every parameter (for ``init``): the MPI and, with GMNR, Δc."""
        self(z, depths)
        if self.view_color is not None:
            n = depths.shape[0]
            self.view_color(jnp.zeros((n, 2)), depths, jnp.zeros((n, 3)),
                            jnp.zeros((self.w_dim,)))


class GMPIHead:
    """GMPI as a GAN head: z → ws → MPI (`GMPIGenerator`) → images at cameras.

    The MPI lives in its reference camera's frame (the mean training pose, at the origin
    looking down +z; `geometry.pose_sampling`): `num_planes` planes uniform in disparity
    over [near, far] (any count at inference), sized by GMPI's pose-range rule
    (`geometry.pose_range_half_extents` over a yaw/pitch grid of ± truncation σ).
    Rendered images are in [−1, 1] at the MPI's resolution, depth is z-depth [B, S, S].

    GMNR (arXiv 2304.01172) is this head with `model.view_dependence.fraction` > 0: in
    training, that fraction of each plane's pixels with non-zero compositing weight in a
    view (α-guided sampling) get the view-dependent colour change Δc before compositing;
    at inference (``sample_fraction=1``) every such pixel does.
    """

    def __init__(self, model, poses, fov_deg: float):
        view = model.get("view_dependence")
        self.view_fraction = float(view.fraction) if view is not None else 0.0
        view_color = None
        if self.view_fraction > 0:
            view_color = ViewDependentColor(position_width=int(view.position_width),
                                            view_width=int(view.view_width))
        self.generator = GMPIGenerator(
            resolution=model.resolution, z_dim=model.z_dim, w_dim=model.w_dim,
            mapping_layers=model.mapping_layers, channel_base=model.channel_base,
            channel_max=model.channel_max, alpha_max_resolution=model.alpha_max_resolution,
            view_color=view_color, dtype=jnp.dtype(model.dtype))
        self.size = int(model.resolution)
        self.z_dim = int(model.z_dim)
        self.near, self.far = float(model.near), float(model.far)
        self.num_planes = int(model.num_planes)
        self.poses = poses
        self.intrinsics = geo.intrinsics_from_fov(fov_deg, self.size, self.size)

        # The layouts of the training and eval plane counts, computed once on the host:
        # constants of every compiled step instead of ops traced into each.
        self._layouts = {n: self._layout(n) for n in {self.num_planes,
                                                      int(model.num_planes_eval)}}

    def plane_layout(self, num_planes: int):
        """→ (z-depths [P], normalised depths in [0, 1] [P], half extents [P, 2]), host
        constants for any plane count, also when first asked for inside a jit."""
        if num_planes not in self._layouts:
            self._layouts[num_planes] = self._layout(num_planes)
        return self._layouts[num_planes]

    def _layout(self, num_planes: int):
        # Compiled ahead of time and run now, even under a trace: one small program.
        # (Under `ensure_compile_time_eval` the jit ran eagerly, compiling its ~150 ops
        # one by one: 7 s per task built on a CPU.)
        layout = jax.jit(self._layout_arrays, static_argnums=0).lower(num_planes).compile()()
        return tuple(np.asarray(a) for a in layout)

    def _layout_arrays(self, num_planes: int):
        depths = geo.plane_depths(self.near, self.far, num_planes)
        steps = jnp.linspace(-self.poses.truncation, self.poses.truncation, 9)
        grid = jnp.stack(jnp.meshgrid(steps * self.poses.yaw_std + self.poses.yaw_mean,
                                      steps * self.poses.pitch_std + self.poses.pitch_mean),
                         -1).reshape(-1, 2)
        extents = geo.pose_range_half_extents(
            depths, self.intrinsics, self.size, self.size,
            pose_sampling.cameras_at(grid, self.poses), self.poses.reference_camera())
        return depths, (depths - self.near) / (self.far - self.near), extents

    def init(self, rng: jax.Array) -> dict:
        z = jnp.zeros((1, self.z_dim), jnp.float32)
        _, normalised, _ = self.plane_layout(self.num_planes)
        return self.generator.init({"params": rng, "noise": rng}, z, normalised,
                                   method=GMPIGenerator.initialize)["params"]

    def mapping(self, params, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        """z → ws; GMPI's mapping takes no camera (`c` must be None)."""
        if c is not None:
            raise ValueError("GMPI's generator is not camera-conditioned.")
        return self.generator.apply({"params": params}, z, method=GMPIGenerator.mapping)

    def render(self, params, ws: jax.Array, cam_to_world: jax.Array, noise_rng: jax.Array,
               num_planes: int | None = None, sample_fraction: float | None = None,
               light: shading.Light | None = None,
               sampling_keys: jax.Array | None = None) -> dict[str, jax.Array]:
        """ws [B, n, w_dim], cameras [B, V, 4, 4] → {'image' [B, V, S, S, 3] in [−1, 1],
        'depth' [B, V, S, S], 'opacity' [B, V, S, S]}: V views of each sample's MPI.
        `noise_rng`: the synthesis noise inputs' key; `sampling_keys` [B]: each sample's
        key for GMNR's α-guided pixels (default: split from `noise_rng`);
        `sample_fraction`: GMNR's α-guided fraction (default the training one); `light`:
        GMPI's shading augmentation of the MPI's colours (training only)."""
        depths, normalised, extents = self.plane_layout(num_planes or self.num_planes)
        synthesis_rng, sampling_rng = jax.random.split(noise_rng)
        b, v = cam_to_world.shape[:2]
        if sampling_keys is None:
            sampling_keys = jax.random.split(sampling_rng, b)
        mpi = self.generator.apply({"params": params}, ws, normalised,
                                   method=GMPIGenerator.synthesis,
                                   rngs={"noise": synthesis_rng})
        rgb = mpi["rgb"]
        if light is not None:
            rgb = shading.shade_mpi(rgb, mpi["alpha"][..., 0], depths, extents[-1], light)
        rgb = jnp.broadcast_to(rgb[:, None], mpi["alpha"].shape[:-1] + (3,))
        rgba = jnp.concatenate([rgb, mpi["alpha"]], -1)  # [B, P, S, S, 4]
        reference = self.poses.reference_camera()
        fraction = self.view_fraction if sample_fraction is None else sample_fraction

        def view(planes, c2w, w, rng):
            warped = geo.warp_mpi(planes, depths, extents, reference, self.intrinsics, c2w,
                                  self.size, self.size)
            out = geo.composite_mpi(warped["rgb"], warped["alpha"], warped["z"])
            if self.view_fraction > 0:
                colors = self._view_dependent_colors(params, warped, out["weights"], c2w, w,
                                                     normalised, rng, fraction)
                out["color"] = jnp.sum(out["weights"][..., None] * colors, axis=0)
            return out

        rngs = jax.vmap(lambda k: jax.random.split(k, v))(sampling_keys)
        views = jax.vmap(jax.vmap(view, in_axes=(None, 0, None, 0)))(
            rgba, cam_to_world, ws[:, 0], rngs)
        return {"image": views["color"] * 2.0 - 1.0, "depth": views["depth"],
                "opacity": views["opacity"]}

    def _view_dependent_colors(self, params, warped, weights, c2w, w, normalised, rng,
                               fraction: float) -> jax.Array:
        """GMNR's α-VdR in one view: the warped plane colours [P, S, S, 3] with
        c' = clamp(c + Δc, 0, 1) at the α-guided pixels (all pixels of non-zero weight
        when `fraction` ≥ 1), others unchanged."""
        p = weights.shape[0]
        n = self.size * self.size
        uv = warped["uv"].reshape(p, n, 2) / self.size * 2.0 - 1.0  # plane coords [−1, 1]
        _, directions = geo.pixel_rays(self.intrinsics, c2w, self.size, self.size)
        reference = self.poses.reference_camera()
        directions, _ = geo.normalize_directions(directions.reshape(n, 3) @ reference[:3, :3])
        colors = warped["rgb"].reshape(p, n, 3)

        def delta(plane_uv, plane_depth, plane_directions):
            return self.generator.apply(
                {"params": params}, plane_uv.reshape(-1, 2), plane_depth.reshape(-1),
                plane_directions.reshape(-1, 3), w,
                method=GMPIGenerator.view_dependent_color).reshape(plane_uv.shape[:-1] + (3,))

        if fraction >= 1.0:
            shifted = colors + delta(uv, jnp.broadcast_to(normalised[:, None], (p, n)),
                                     jnp.broadcast_to(directions, (p, n, 3)))
            refined = jnp.where(weights.reshape(p, n, 1) > 0, jnp.clip(shifted, 0.0, 1.0),
                                colors)
            return refined.reshape(warped["rgb"].shape)
        index, valid = geo.alpha_guided_pixels(rng, weights, fraction)
        k = index.shape[1]
        picked = jnp.take_along_axis(colors, index[..., None], axis=1)
        shifted = picked + delta(jnp.take_along_axis(uv, index[..., None], axis=1),
                                 jnp.broadcast_to(normalised[:, None], (p, k)),
                                 directions[index])
        new = jnp.where(valid[..., None], jnp.clip(shifted, 0.0, 1.0), picked)
        refined = colors.at[jnp.arange(p)[:, None], index].set(new)
        return refined.reshape(warped["rgb"].shape)
