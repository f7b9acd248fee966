"""geometry.mpi (GMPI's multiplane-image renderer) against closed forms and a float64 numpy
ray-plane reference written independently of it (unit rays, world-frame plane normals,
per-pixel loops). Everything runs under ``jax.jit``, which also proves it jit-friendly.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax import geometry as geo

render = jax.jit(geo.render_mpi, static_argnames=("height", "width"))
frustum = jax.jit(geo.frustum_half_extents, static_argnames=("height", "width"))
pose_range = jax.jit(geo.pose_range_half_extents,
                     static_argnames=("height", "width", "confined"))

# GMPI's FFHQ set-up (SPECS.md): FOV 12.6°, planes 0.95–1.12, the reference camera at the
# origin looking down +z at the sphere centre (0, 0, 1).
NEAR, FAR, FOV = 0.95, 1.12, 12.6
PIVOT = np.array([0.0, 0.0, 0.5 * (NEAR + FAR)])  # the MPI's centre depth


def _texel_composite(rgba):
    """Closed-form front-to-back composite of texels [P, H, W, 4] seen head-on (numpy)."""
    color, transmit = np.zeros(rgba.shape[1:3] + (3,)), np.ones(rgba.shape[1:3])
    for plane in rgba.astype(np.float64):
        color += transmit[..., None] * plane[..., 3:] * plane[..., :3]
        transmit *= 1.0 - plane[..., 3]
    return color, 1.0 - transmit


def test_reference_camera_renders_the_planes_exactly():
    rng = np.random.default_rng(0)
    height, width = 6, 8  # H != W catches swapped axes
    rgba = rng.uniform(size=(3, height, width, 4)).astype(np.float32)
    ref = geo.look_at(jnp.array([0.3, -0.5, -2.0]), jnp.array([0.0, 0.1, 1.0]))
    k = geo.intrinsics_from_fov(30.0, height, width)
    depths = geo.plane_depths(1.5, 4.0, 3)
    half = frustum(depths, k, height=height, width=width)
    out = render(rgba, depths, half, ref, k, ref, height=height, width=width)
    planes = jax.jit(geo.warp_mpi, static_argnames=("height", "width"))(
        rgba, depths, half, ref, k, ref, height=height, width=width)
    # The homography is the identity: every pixel centre hits its texel's centre.
    rows, cols = np.mgrid[:height, :width] + 0.5
    np.testing.assert_allclose(planes["uv"], np.broadcast_to(
        np.stack([cols, rows], -1), (3, height, width, 2)), atol=1e-4)
    np.testing.assert_allclose(planes["rgb"], rgba[..., :3], atol=1e-5)
    color, opacity = _texel_composite(rgba)
    np.testing.assert_allclose(out["color"], color, atol=1e-5)
    np.testing.assert_allclose(out["opacity"], opacity, atol=1e-5)


def test_two_planes_composite_in_closed_form():
    a1, a2 = 0.3, 0.6
    c1, c2 = np.array([0.9, 0.2, 0.1]), np.array([0.1, 0.5, 0.8])
    rgba = np.zeros((2, 2, 2, 4), np.float32)
    rgba[0, ..., :3], rgba[0, ..., 3] = c1, a1
    rgba[1, ..., :3], rgba[1, ..., 3] = c2, a2
    depths = jnp.array([1.0, 2.0])
    k = geo.intrinsics_from_fov(40.0, 3, 3)
    half = frustum(depths, k, height=3, width=3, margin=1.5)
    out = render(rgba, depths, half, jnp.eye(4), k, jnp.eye(4), height=3, width=3)
    w1, w2 = a1, (1 - a1) * a2
    np.testing.assert_allclose(out["color"], np.broadcast_to(w1 * c1 + w2 * c2, (3, 3, 3)),
                               atol=1e-6)
    np.testing.assert_allclose(out["weights"][:, 1, 1], [w1, w2], atol=1e-6)
    np.testing.assert_allclose(out["opacity"], w1 + w2, atol=1e-6)
    np.testing.assert_allclose(out["depth"], w1 * 1.0 + w2 * 2.0, atol=1e-6)


def test_opaque_plane_depth_is_the_target_z_depth():
    height, width, dist = 5, 7, 3.0
    rgba = np.ones((1, 4, 4, 4), np.float32)  # one opaque plane
    ref = geo.look_at(jnp.array([1.0, -0.5, -1.0]), jnp.array([0.0, 0.0, 2.0]))
    k = geo.intrinsics_from_fov(50.0, height, width)
    half = jnp.full((1, 2), 100.0)
    depths = jnp.array([dist])
    r_ref, c_ref = np.asarray(ref[:3, :3], np.float64), np.asarray(ref[:3, 3], np.float64)

    # Along the reference axis by s: the plane is at z-depth dist - s everywhere.
    for s in (0.0, 0.4, -0.7):
        moved = ref.at[:3, 3].add(s * ref[:3, 2])
        out = render(rgba, depths, half, ref, k, moved, height=height, width=width)
        np.testing.assert_allclose(out["depth"], dist - s, rtol=1e-5)
        np.testing.assert_allclose(out["opacity"], 1.0, atol=1e-6)

    # Rotated by R_rel in the reference frame, centre c_rel: the plane n_t·X = dist - c_z,
    # n_t = R_rel^T e_z in the target frame, meets the pixel ray X = z K^-1 [u, v, 1] at
    # z = (dist - c_z) / (n_t · K^-1 [u, v, 1]).
    rel_rot = np.asarray(geo.rotation_about_axis(jnp.array([0.3, 1.0, 0.2]), 0.15), np.float64)
    rel_centre = np.array([0.05, -0.1, 0.3])
    target = np.eye(4)
    target[:3, :3], target[:3, 3] = r_ref @ rel_rot, c_ref + r_ref @ rel_centre
    out = render(rgba, depths, half, ref, k, jnp.asarray(target, jnp.float32),
                 height=height, width=width)
    rows, cols = np.mgrid[:height, :width] + 0.5
    pix = np.stack([cols, rows, np.ones_like(cols)], -1) @ np.linalg.inv(np.asarray(k)).T
    expected = (dist - rel_centre[2]) / (pix @ rel_rot[2])  # n_t · q = (R_rel q)_z
    np.testing.assert_allclose(out["depth"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["opacity"], 1.0, atol=1e-6)


# ------------------------------------------------------------------ numpy reference


def _bilinear_np(texture, fx, fy):
    """texture [H, W, C] at continuous texel indices (fx, fy) (centres at integers),
    clamped to the border texels."""
    th, tw = texture.shape[:2]
    fx, fy = min(max(fx, 0.0), tw - 1.0), min(max(fy, 0.0), th - 1.0)
    x0, y0 = min(int(np.floor(fx)), max(tw - 2, 0)), min(int(np.floor(fy)), max(th - 2, 0))
    x1, y1 = min(x0 + 1, tw - 1), min(y0 + 1, th - 1)
    ax, ay = fx - x0, fy - y0
    return ((1 - ay) * ((1 - ax) * texture[y0, x0] + ax * texture[y0, x1])
            + ay * ((1 - ax) * texture[y1, x0] + ax * texture[y1, x1]))


def _render_np(rgba, depths, half, ref, k, c2w, height, width):
    """Slow float64 MPI render: unit rays, world-frame planes, loops."""
    rgba, depths, half, ref, k, c2w = (np.asarray(a, np.float64)
                                       for a in (rgba, depths, half, ref, k, c2w))
    tex_h, tex_w = rgba.shape[1:3]
    normal, axis_x, axis_y, ref_c = ref[:3, 2], ref[:3, 0], ref[:3, 1], ref[:3, 3]
    centre, forward = c2w[:3, 3], c2w[:3, 2]
    k_inv = np.linalg.inv(k)
    color = np.zeros((height, width, 3))
    depth, opacity = np.zeros((height, width)), np.zeros((height, width))
    weights = np.zeros((len(depths), height, width))
    for row in range(height):
        for col in range(width):
            ray = c2w[:3, :3] @ (k_inv @ np.array([col + 0.5, row + 0.5, 1.0]))
            ray /= np.linalg.norm(ray)
            transmit = 1.0
            for i, d in enumerate(depths):
                facing = normal @ ray
                if abs(facing) < 1e-12:
                    continue
                dist = normal @ (ref_c + d * normal - centre) / facing  # along the unit ray
                if dist <= 0:
                    continue
                hit = centre + dist * ray
                x, y = axis_x @ (hit - ref_c), axis_y @ (hit - ref_c)
                if abs(x) > half[i, 0] or abs(y) > half[i, 1]:
                    continue
                value = _bilinear_np(rgba[i], (x + half[i, 0]) / (2 * half[i, 0]) * tex_w - 0.5,
                                     (y + half[i, 1]) / (2 * half[i, 1]) * tex_h - 0.5)
                w = transmit * value[3]
                weights[i, row, col] = w
                color[row, col] += w * value[:3]
                depth[row, col] += w * dist * (ray @ forward)  # z-depth of the hit
                transmit *= 1.0 - value[3]
            opacity[row, col] = 1.0 - transmit
    return {"color": color, "depth": depth, "opacity": opacity, "weights": weights}


def _gmpi_cameras(rng, n, max_angle=0.3, max_shift=0.02):
    """Cameras orbiting the MPI's centre (yaw/pitch up to max_angle), slightly shifted."""
    yaw, pitch = rng.uniform(-max_angle, max_angle, (2, n))
    cams = np.array(geo.orbit(jnp.eye(4), PIVOT, yaw, pitch))
    cams[:, :3, 3] += rng.uniform(-max_shift, max_shift, (n, 3))
    return jnp.asarray(cams, jnp.float32)


def test_matches_float64_numpy_reference_for_random_planes_and_cameras():
    rng = np.random.default_rng(1)
    height, width = 7, 9
    num_planes = 5
    rgba = rng.uniform(size=(num_planes, 6, 8, 4)).astype(np.float32)
    k = geo.intrinsics_from_fov(FOV, height, width)
    depths = geo.plane_depths(NEAR, FAR, num_planes)
    grid = geo.orbit(jnp.eye(4), PIVOT, jnp.linspace(-0.3, 0.3, 5)[:, None],
                     jnp.linspace(-0.3, 0.3, 5)[None, :]).reshape(-1, 4, 4)
    half = pose_range(depths, k, height=height, width=width, cam_to_worlds=grid)
    cams = _gmpi_cameras(rng, 3)
    # Many views of one MPI through jax.vmap (the documented batching).
    views = jax.jit(jax.vmap(lambda c: geo.render_mpi(rgba, depths, half, jnp.eye(4), k, c,
                                                      height, width)))(cams)
    for i, cam in enumerate(cams):
        want = _render_np(rgba, depths, half, np.eye(4), k, cam, height, width)
        for key in ("color", "depth", "opacity", "weights"):
            np.testing.assert_allclose(views[key][i], want[key], atol=1e-4,
                                       err_msg=f"camera {i}: {key}")
    # The front planes are the confined volume: some rays leave them, so the masking runs.
    assert np.any(np.asarray(views["alpha"][:, 0]) == 0.0)


# ------------------------------------------------------------------ depths and extents


def test_plane_depths_are_uniform_in_disparity_front_to_back():
    for num_planes in (32, 96):  # training and inference counts: the same near/far
        depths = np.asarray(geo.plane_depths(NEAR, FAR, num_planes), np.float64)
        assert depths.shape == (num_planes,)
        assert depths[0] == np.float32(NEAR) and depths[-1] == np.float32(FAR)
        assert np.all(np.diff(depths) > 0)
        steps = np.diff(1.0 / depths)
        np.testing.assert_allclose(steps, (1 / FAR - 1 / NEAR) / (num_planes - 1), rtol=1e-4)
    np.testing.assert_allclose(geo.plane_depths(NEAR, FAR, 1), [FAR])


def test_camera_seeing_no_plane_gets_zero_opacity_and_colour():
    rng = np.random.default_rng(2)
    rgba = rng.uniform(size=(4, 4, 4, 4)).astype(np.float32)
    rgba[-1, ..., 3] = 1.0  # even an opaque back plane
    k = geo.intrinsics_from_fov(FOV, 4, 4)
    depths = geo.plane_depths(NEAR, FAR, 4)
    half = frustum(depths, k, height=4, width=4, margin=2.0)
    turned = geo.orbit(jnp.eye(4), jnp.zeros(3), jnp.pi, 0.0)  # looks away from the planes
    aside = jnp.eye(4).at[0, 3].set(5.0)  # looks past them
    for cam in (turned, aside):
        out = render(rgba, depths, half, jnp.eye(4), k, cam, height=4, width=4)
        for key in ("opacity", "color", "depth", "weights"):
            np.testing.assert_array_equal(out[key], 0.0, err_msg=key)


def test_pose_range_extents_cover_every_camera_in_the_range():
    height, width = 6, 6
    k = geo.intrinsics_from_fov(FOV, height, width)
    depths = geo.plane_depths(NEAR, FAR, 4)
    grid = geo.orbit(jnp.eye(4), PIVOT, jnp.linspace(-0.3, 0.3, 7)[:, None],
                     jnp.linspace(-0.2, 0.2, 7)[None, :]).reshape(-1, 4, 4)
    half = pose_range(depths, k, height=height, width=width, cam_to_worlds=grid)
    at_depth = frustum(depths, k, height=height, width=width)
    # Confined (GMPI's default): the front planes share the mean pose's frustum at the back.
    np.testing.assert_allclose(half[:-1], np.broadcast_to(at_depth[-1], (3, 2)), rtol=1e-6)
    open_front = pose_range(depths, k, height=height, width=width, cam_to_worlds=grid,
                            confined=False)
    np.testing.assert_allclose(open_front[:-1], at_depth[:-1], rtol=1e-6)
    assert np.all(half[-1] > at_depth[-1])

    rgba = np.zeros((4, 8, 8, 4), np.float32)
    rgba[-1, ..., 3] = 1.0  # only the back plane: opacity 1 exactly where it is hit
    rng = np.random.default_rng(3)
    yaw, pitch = rng.uniform(-0.3, 0.3, 6), rng.uniform(-0.2, 0.2, 6)
    inside = jnp.concatenate([grid[::8], geo.orbit(jnp.eye(4), PIVOT, yaw, pitch)])
    cover = jax.jit(jax.vmap(lambda c: geo.render_mpi(rgba, depths, half, jnp.eye(4), k, c,
                                                      height, width)["opacity"]))
    np.testing.assert_array_equal(cover(inside), 1.0)
    # Tight, not merely huge: a camera well outside the range sees past the back plane.
    outside = geo.orbit(jnp.eye(4), PIVOT, jnp.array([0.6]), jnp.array([0.0]))
    assert np.min(cover(outside)) == 0.0


def test_gradients_stay_finite_when_rays_miss_planes():
    rng = np.random.default_rng(4)
    rgba = jnp.asarray(rng.uniform(size=(3, 4, 4, 4)), jnp.float32).at[-1, ..., 3].set(1.0)
    k = geo.intrinsics_from_fov(FOV, 4, 4)
    depths = geo.plane_depths(NEAR, FAR, 3)
    half = frustum(depths, k, height=4, width=4)  # tight: oblique views leave the planes

    def loss(planes, cam):
        out = geo.render_mpi(planes, depths, half, jnp.eye(4), k, cam, 4, 4)
        return jnp.sum(out["color"]) + jnp.sum(out["depth"])

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    oblique = geo.orbit(jnp.eye(4), PIVOT, 0.3, 0.1)
    turned = geo.orbit(jnp.eye(4), jnp.zeros(3), jnp.pi, 0.0)
    for cam in (oblique, turned):
        for g in grad(rgba, cam):
            assert np.all(np.isfinite(g))
    assert np.any(grad(rgba, oblique)[1] != 0.0)  # the pose gets a gradient too


def test_alpha_guided_sampling_picks_only_pixels_with_weight():
    rng = np.random.default_rng(5)
    weights = rng.uniform(size=(3, 6, 6)) * (rng.uniform(size=(3, 6, 6)) < 0.4)
    weights[2] = 0.0  # a plane nothing shows through
    index, valid = geo.alpha_guided_pixels(jax.random.key(0), jnp.asarray(weights), 0.25)
    index, valid = np.asarray(index), np.asarray(valid)
    assert index.shape == (3, 9)
    flat = weights.reshape(3, -1)
    for plane in range(3):
        picked = index[plane][valid[plane]]
        assert np.all(flat[plane, picked] > 0) and len(set(picked)) == len(picked)
        # A quarter of the plane's non-zero pixels, rounded up.
        assert valid[plane].sum() == -(-int((flat[plane] > 0).sum()) // 4)
