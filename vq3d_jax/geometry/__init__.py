"""Pure ``jax.numpy`` geometry shared by every head: cameras, contraction, ray sampling
(ray_sampling.py), compositing along rays (compositing.py), rendering a field through
both (field_rendering.py), tri-plane lookup and splatting, depth-based warps, multiplane
images (mpi.py: GMPI's plane depths, extents and renderer; shading.py: its shading
augmentation), training cameras
(pose_sampling.py) (no Flax).
Conventions: ``cameras`` module docstring.
"""

from vq3d_jax.geometry.cameras import (
    WORLD_UP,
    camera_directions,
    disparity_from_depth,
    intrinsics_from_fov,
    look_at,
    normalize_directions,
    orbit,
    pixel_rays,
    project,
    rebase_camera,
    rotation_about_axis,
    unproject,
    world_to_camera,
)
from vq3d_jax.geometry.compositing import interval_midpoints, volume_render
from vq3d_jax.geometry.contraction import contract, contract_to_unit, inverse_contract
from vq3d_jax.geometry.field_rendering import RenderOptions, render_rays
from vq3d_jax.geometry.mpi import (
    alpha_guided_pixels,
    composite_mpi,
    frustum_half_extents,
    plane_depths,
    pose_range_half_extents,
    render_mpi,
    warp_mpi,
)
from vq3d_jax.geometry.pose_sampling import PoseDistribution, sample_cameras
from vq3d_jax.geometry.precision import at_least_float32
from vq3d_jax.geometry.ray_sampling import (
    blur_pool_weights,
    edges_from_samples,
    merge_samples,
    sample_pdf,
    stratified_samples,
)
from vq3d_jax.geometry.triplane import (
    PLANE_AXES,
    PLANE_NAMES,
    pull_push_fill,
    splat_to_triplane,
    triplane_features,
)
from vq3d_jax.geometry.warp import backward_warp, bilinear_sample

__all__ = [
    "WORLD_UP",
    "RenderOptions",
    "alpha_guided_pixels",
    "at_least_float32",
    "PLANE_AXES",
    "PLANE_NAMES",
    "PoseDistribution",
    "backward_warp",
    "bilinear_sample",
    "camera_directions",
    "composite_mpi",
    "contract",
    "contract_to_unit",
    "disparity_from_depth",
    "edges_from_samples",
    "frustum_half_extents",
    "interval_midpoints",
    "intrinsics_from_fov",
    "inverse_contract",
    "look_at",
    "merge_samples",
    "normalize_directions",
    "orbit",
    "pixel_rays",
    "plane_depths",
    "pose_range_half_extents",
    "project",
    "pull_push_fill",
    "rebase_camera",
    "render_mpi",
    "render_rays",
    "rotation_about_axis",
    "sample_cameras",
    "blur_pool_weights",
    "sample_pdf",
    "splat_to_triplane",
    "stratified_samples",
    "triplane_features",
    "unproject",
    "volume_render",
    "warp_mpi",
    "world_to_camera",
]
