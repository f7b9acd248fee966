"""The tri-plane GAN head (EG3D, arXiv 2112.07945; Mimic3D, arXiv 2303.09036): z and a
camera → tri-planes (`eg3d.TriplaneGenerator`) → volume-rendered views
(`geometry.render_rays`, the renderer VQ3D's decoder uses too).

Frames. The planes live in EG3D's world frame, so that its cameras, pivot and box mean
the same here: a point p of ours is p_eg3d = F·(p − centre) + pivot (F = diag(1, −1, −1),
`datasets/eg3d_cameras.py`; centre = the pose sphere's, pivot = where EG3D's cameras look,
e.g. (0, 0, 0.2) on FFHQ), then scaled by 2 / box_size into the planes' [−1, 1]³, with
zero features outside (EG3D's grid_sample padding). The planes are xy, yz and zx, as
Mimic3D's (EG3D's code projects onto xy, xz and zx, two planes on the same axes:
NVlabs/eg3d#67; its checkpoints' second plane needs that projection). Rays are sampled in
z-depth between `near` and `far` (EG3D: distance along the ray; the two differ by < 1.4 %
at the corner of its 13.37° field of view), `num_samples` stratified in depth, then
`num_importance` from the blur-pooled coarse weights (+0.01), as EG3D's importance sampler.

A render is the features of every pixel, composited over zero and mapped ×2 − 1 as
EG3D's marcher does: the first three channels are the raw image; training views go
through the 2D super-resolution (`render`), the high-resolution views of Mimic3D come
directly from the coarse and detail planes (`render_direct`, inference and patches).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax import geometry as geo
from vq3d_jax.datasets.eg3d_cameras import WORLD_FLIP
from vq3d_jax.models.eg3d import TriplaneGenerator, density, resize

LABEL_SIZE = 25  # EG3D's camera label: cam-to-world 16 + normalised intrinsics 9


class TriplaneHead:
    """EG3D/Mimic3D as a GAN head: `mapping` (z, c → ws), `planes`, `render` (neural
    render + 2D super-resolution) and `render_direct` (Mimic3D's high-resolution render),
    `field` and `raw_density_box` (the density), `label` (EG3D's camera label)."""

    def __init__(self, model, poses, fov_deg: float):
        t = model.triplane
        self.generator = TriplaneGenerator(
            resolution=t.plane_resolution, z_dim=model.z_dim, w_dim=model.w_dim,
            mapping_layers=model.mapping_layers, channel_base=model.channel_base,
            channel_max=model.channel_max, channels=3 * t.plane_channels,
            c_dim=LABEL_SIZE if t.pose_conditioning else 0,
            decoder_hidden=t.decoder_hidden, decoder_features=t.decoder_features,
            image_resolution=model.resolution, sr_input_resolution=t.sr_input_resolution,
            sr_channel_base=t.sr_channel_base, sr_channel_max=t.sr_channel_max,
            conv3d_resolutions=tuple(t.conv3d_resolutions), detail_planes=t.detail_planes,
            dtype=jnp.dtype(model.dtype))
        self.size = int(model.resolution)
        self.render_size = int(t.render_resolution)
        self.z_dim = int(model.z_dim)
        self.conditional = bool(t.pose_conditioning)
        self.near, self.far = float(model.near), float(model.far)
        self.poses = poses
        self.fov_deg = float(fov_deg)
        self.intrinsics = geo.intrinsics_from_fov(fov_deg, self.size, self.size)
        self.box_size = float(t.box_size)
        self.pivot = np.asarray(t.pivot, np.float32)
        self.options = geo.RenderOptions(
            near=self.near, far=self.far, num_samples=int(t.num_samples),
            num_importance=int(t.num_importance), spacing="depth", weight_padding=0.01,
            chunk_size=t.get("chunk_size") or None)
        # Ours → EG3D's world: p_eg3d = F·p + (pivot − F·centre), as one 4×4.
        centre = np.asarray(poses.center(), np.float32)
        flip = WORLD_FLIP[:3, :3].astype(np.float32)
        self.to_eg3d = np.eye(4, dtype=np.float32)
        self.to_eg3d[:3, :3] = flip
        self.to_eg3d[:3, 3] = self.pivot - flip @ centre

    # -- networks ----------------------------------------------------------------------
    def init(self, rng: jax.Array) -> dict:
        z = jnp.zeros((1, self.z_dim), jnp.float32)
        c = jnp.zeros((1, LABEL_SIZE), jnp.float32) if self.conditional else None
        return self.generator.init({"params": rng, "noise": rng}, z, c,
                                   method=TriplaneGenerator.initialize)["params"]

    def mapping(self, params, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        return self.generator.apply({"params": params}, z, c if self.conditional else None,
                                    method=TriplaneGenerator.mapping)

    def planes(self, params, ws: jax.Array, noise_rng: jax.Array,
               detail: bool = False) -> dict[str, jax.Array]:
        """ws → {'coarse': [B, 3, R, R, C]}, with `detail` also Mimic3D's 'detail' planes
        [B, 3, 2R, 2R, C]."""
        coarse_rng, detail_rng = jax.random.split(noise_rng)
        planes = {"coarse": self.generator.apply(
            {"params": params}, ws, method=TriplaneGenerator.planes, rngs={"noise": coarse_rng})}
        if detail:
            planes["detail"] = self.detail(params, planes["coarse"], ws, detail_rng)
        return planes

    def detail(self, params, coarse: jax.Array, ws: jax.Array,
               noise_rng: jax.Array) -> jax.Array:
        """Mimic3D's detail planes [B, 3, 2R, 2R, C] from the coarse ones."""
        return self.generator.apply({"params": params}, coarse, ws,
                                    method=TriplaneGenerator.detail, rngs={"noise": noise_rng})

    def label(self, cam_to_world: jax.Array) -> jax.Array:
        """Cameras [..., 4, 4] → EG3D's 25-float labels: its cam-to-world (row-major) and
        the intrinsics normalised by the image size (`datasets/eg3d_cameras.py`)."""
        eg3d = jnp.asarray(self.to_eg3d) @ cam_to_world
        k = self.intrinsics / jnp.asarray([[self.size], [self.size], [1.0]])
        k = jnp.broadcast_to(k.reshape(9), cam_to_world.shape[:-2] + (9,))
        return jnp.concatenate([eg3d.reshape(cam_to_world.shape[:-2] + (16,)), k], -1)

    # -- the field ---------------------------------------------------------------------
    def _plane_points(self, points: jax.Array) -> jax.Array:
        """World points [..., 3] (ours) → EG3D's world (its box: [−box/2, box/2]³)."""
        m = jnp.asarray(self.to_eg3d)
        return points @ m[:3, :3].T + m[:3, 3]

    def _features(self, planes: dict, box_points: jax.Array, which: str) -> jax.Array:
        """One sample's plane dict, points in EG3D's world [..., 3] → mean plane features
        [..., C]: the coarse planes', plus the detail planes' with `which='both'`."""
        coords = box_points * (2.0 / self.box_size)
        feats = geo.triplane_features(planes["coarse"], coords, "mean", outside="zeros")
        if which == "both" and "detail" in planes:
            feats = feats + geo.triplane_features(planes["detail"], coords, "mean",
                                                  outside="zeros")
        return feats

    def raw_density_box(self, params, planes: dict, box_points: jax.Array,
                        which: str = "both") -> jax.Array:
        """Raw σ (before softplus(· − 1)) of one sample's planes at points [N, 3] given in
        EG3D's world (the density regulariser samples its box)."""
        raw, _ = self.generator.apply({"params": params}, self._features(planes, box_points,
                                                                          which),
                                      method=TriplaneGenerator.decode)
        return raw

    def field(self, params, planes: dict, which: str = "coarse"):
        """`render_rays`' field of one sample's planes: points → (σ, features)."""

        def field_fn(points):
            raw, feats = self.generator.apply(
                {"params": params}, self._features(planes, self._plane_points(points), which),
                method=TriplaneGenerator.decode)
            return density(raw), feats

        return field_fn

    # -- rendering ---------------------------------------------------------------------
    def _render_views(self, params, planes, cam_to_world, ray_keys, size: int, which: str,
                      window=None, randomized: bool = True) -> dict:
        """Every sample's planes from its views: cameras [B, V, 4, 4] → {'features'
        [B, V, h, w, F] (×2 − 1), 'depth', 'opacity' [B, V, h, w]} of the `size`² image,
        or of its `window` (corners [B, 2] as (top, left), height, width) alone; a key
        per sample `ray_keys` [B] draws its samples along the rays."""
        b, v = cam_to_world.shape[:2]
        k = geo.intrinsics_from_fov(self.fov_deg, size, size)
        options = dataclasses.replace(self.options, randomized=randomized)
        h, w = (size, size) if window is None else (window[1], window[2])
        corners = (jnp.zeros((b, 2), jnp.float32) if window is None
                   else jnp.asarray(window[0], jnp.float32))

        def one(sample_planes, c2w, corner, key):
            # A window is its own camera: the principal point moved by its corner.
            kw = k.at[0, 2].add(-corner[1]).at[1, 2].add(-corner[0])
            field_fn = self.field(params, sample_planes, which)

            def view(c, view_key):
                origins, directions = geo.pixel_rays(kw, c, h, w)
                out = geo.render_rays(field_fn, origins, directions, view_key, options)
                return out["color"] * 2.0 - 1.0, out["depth_normalized"], out["opacity"]

            return jax.vmap(view)(c2w, jax.random.split(key, v))

        feats, depth, opacity = jax.vmap(one)(planes, cam_to_world, corners, ray_keys)
        return {"features": feats, "depth": depth, "opacity": opacity}

    def render(self, params, ws: jax.Array, cam_to_world: jax.Array, noise_rng: jax.Array,
               planes: dict | None = None, ray_keys: jax.Array | None = None
               ) -> dict[str, jax.Array]:
        """ws [B, n, w_dim], cameras [B, V, 4, 4] → EG3D's views: {'image' [B, V, S, S, 3]
        (2D super-resolution), 'image_raw' [B, V, r, r, 3], 'features' [B, V, r, r, F],
        'depth', 'opacity' [B, V, S, S] (upsampled from the r² render)}, r the neural
        render size; the coarse planes only (Mimic3D's 2D branch). The ray samples are
        drawn from `ray_keys` [B] (training: a key per example, so that they do not depend
        on how the batch is split), else from `noise_rng`."""
        b, v, r = cam_to_world.shape[0], cam_to_world.shape[1], self.render_size
        synthesis_rng, render_rng = jax.random.split(noise_rng)
        planes = planes if planes is not None else self.planes(params, ws, synthesis_rng)
        if ray_keys is None:
            ray_keys = jax.random.split(render_rng, b)
        out = self._render_views(params, planes, cam_to_world, ray_keys, r, "coarse")
        feats = out["features"].reshape((b * v, r, r, -1))
        raw = feats[..., :3]
        ws_views = jnp.repeat(ws, v, axis=0)
        image = self.generator.apply({"params": params}, raw, feats, ws_views,
                                     method=TriplaneGenerator.super_resolve)
        maps = jnp.stack([out["depth"], out["opacity"]], -1).reshape((b * v, r, r, 2))
        maps = resize(maps, self.size).reshape((b, v, self.size, self.size, 2))
        return {"image": image.reshape((b, v) + image.shape[1:]),
                "image_raw": raw.reshape((b, v, r, r, 3)), "features": out["features"],
                "depth": maps[..., 0], "opacity": maps[..., 1], "planes": planes}

    def render_direct(self, params, planes: dict, cam_to_world: jax.Array, rng: jax.Array | None,
                      size: int | None = None, window=None, randomized: bool = True,
                      ray_keys: jax.Array | None = None) -> dict[str, jax.Array]:
        """Mimic3D's high-resolution views straight from the coarse + detail planes, no 2D
        super-resolution: {'image' [B, V, h, w, 3], 'depth', 'opacity' [B, V, h, w]} of the
        `size`² image (default the image size), or of its `window` (top-left corners
        [B, 2], height, width). `randomized`: jittered samples (training) or bin centres,
        drawn from `ray_keys` [B] if given, else from `rng`."""
        if ray_keys is None:
            ray_keys = jax.random.split(rng, cam_to_world.shape[0])
        out = self._render_views(params, planes, cam_to_world, ray_keys, size or self.size,
                                 "both", window, randomized)
        return {"image": out["features"][..., :3], "depth": out["depth"],
                "opacity": out["opacity"]}
