"""vq3d_jax.geometry against closed forms, float64 numpy references and the dataset's numpy
camera helpers.

Every function runs under ``jax.jit`` (which is also what proves it jit-friendly): on CPU one
compile per signature is several times cheaper than eager op-by-op dispatch here.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vq3d_jax import geometry as geo
from vq3d_jax.datasets import cameras_np, raycast

g = types.SimpleNamespace(
    intrinsics_from_fov=jax.jit(geo.intrinsics_from_fov, static_argnums=(1, 2)),
    look_at=jax.jit(geo.look_at),
    orbit=jax.jit(geo.orbit),
    pixel_rays=jax.jit(geo.pixel_rays, static_argnums=(2, 3)),
    project=jax.jit(geo.project),
    unproject=jax.jit(geo.unproject),
    normalize_directions=jax.jit(geo.normalize_directions),
    contract=jax.jit(geo.contract),
    contract_to_unit=jax.jit(geo.contract_to_unit),
    inverse_contract=jax.jit(geo.inverse_contract),
    volume_render=jax.jit(geo.volume_render),
    triplane_features=jax.jit(geo.triplane_features, static_argnames=("reduce", "outside")),
    stratified_samples=jax.jit(
        geo.stratified_samples,
        static_argnames=("num_samples", "batch_shape", "randomized"),
    ),
    sample_pdf=jax.jit(geo.sample_pdf, static_argnames=("num_samples", "randomized", "space")),
    merge_samples=jax.jit(geo.merge_samples),
    edges_from_samples=jax.jit(geo.edges_from_samples),
)

# --------------------------------------------------------------------------- cameras


def _random_pose(rng):
    eye = rng.uniform(-4.0, 4.0, 3) + np.array([0.0, -1.0, -6.0])
    target = rng.uniform(-1.0, 1.0, 3)
    return cameras_np.look_at(eye, target), target


def test_cameras_match_dataset_numpy_helpers():
    rng = np.random.default_rng(0)
    height, width = 5, 7  # H != W catches swapped arguments
    k_np = cameras_np.intrinsics_from_fov(47.0, width, height)  # numpy order: (width, height)
    k = g.intrinsics_from_fov(47.0, height, width)
    np.testing.assert_allclose(k, k_np, rtol=1e-6)

    poses, orbits = [], []
    for _ in range(3):
        eye, target = rng.normal(size=3) * 3.0, rng.normal(size=3)
        c2w_np = cameras_np.look_at(eye, target)
        np.testing.assert_allclose(g.look_at(eye, target), c2w_np, atol=1e-5)
        yaw, pitch = rng.uniform(-0.5, 0.5, 2)
        orbit_np = cameras_np.orbit(c2w_np, target, yaw, pitch)
        np.testing.assert_allclose(g.orbit(c2w_np, target, yaw, pitch), orbit_np, atol=1e-5)
        poses.append(c2w_np)
        orbits.append(orbit_np)
    # Batched orbit agrees too.
    yaws, pitches = np.array([0.1, -0.2, 0.3]), np.array([-0.3, 0.2, 0.05])
    np.testing.assert_allclose(
        g.orbit(np.stack(poses), np.zeros(3), yaws, pitches),
        np.stack([cameras_np.orbit(p, np.zeros(3), y, q) for p, y, q in zip(poses, yaws, pitches)]),
        atol=1e-5,
    )

    cams = np.stack(poses)
    o_np, d_np = cameras_np.pixel_rays(k_np, cams, height, width)  # (V, 3), (3, V, H*W)
    origins, dirs = g.pixel_rays(k, cams, height, width)  # [V, H, W, 3]
    assert dirs.shape == (3, height, width, 3)
    np.testing.assert_allclose(dirs, d_np.transpose(1, 2, 0).reshape(3, height, width, 3), 1e-5)
    np.testing.assert_allclose(origins[:, 2, 3], o_np, rtol=1e-6)

    points = rng.normal(size=(11, 3)) * 2.0
    uv_np, z_np = cameras_np.project(points, k_np, poses[0])
    uv, z = g.project(points, k, poses[0])
    np.testing.assert_allclose(uv, uv_np, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(z, z_np, rtol=1e-5, atol=1e-5)


def test_project_unproject_roundtrip_and_principal_point():
    rng = np.random.default_rng(1)
    c2w, _ = _random_pose(rng)
    k = g.intrinsics_from_fov(60.0, 16, 24)
    uv = rng.uniform(0.0, [24.0, 16.0], (50, 2))
    depth = rng.uniform(0.5, 20.0, 50)
    points = g.unproject(uv, depth, k, c2w)
    uv2, depth2 = g.project(points, k, c2w)
    np.testing.assert_allclose(uv2, uv, atol=2e-3)
    np.testing.assert_allclose(depth2, depth, rtol=1e-5)
    # A point on the optical axis lands on the principal point, the image centre.
    on_axis = c2w[:3, 3] + 3.7 * c2w[:3, 2]
    uv_c, z_c = g.project(on_axis, k, c2w)
    np.testing.assert_allclose(uv_c, [12.0, 8.0], atol=1e-4)
    assert float(z_c) == pytest.approx(3.7, rel=1e-5)


def test_pixel_ray_parameter_is_z_depth():
    rng = np.random.default_rng(2)
    c2w, _ = _random_pose(rng)
    k = g.intrinsics_from_fov(50.0, 4, 6)
    origins, dirs = g.pixel_rays(k, c2w, 4, 6)
    t = jnp.asarray(rng.uniform(0.5, 10.0, (4, 6)), jnp.float32)
    uv, depth = g.project(origins + t[..., None] * dirs, k, c2w)
    np.testing.assert_allclose(depth, t, rtol=1e-5)
    cols, rows = np.meshgrid(np.arange(6) + 0.5, np.arange(4) + 0.5)
    np.testing.assert_allclose(uv, np.stack([cols, rows], -1), atol=1e-3)
    # Unit directions and |d|: |d| >= 1, equal to 1 only on the optical axis.
    unit, norm = g.normalize_directions(dirs)
    np.testing.assert_allclose(jnp.linalg.norm(unit, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit * norm[..., None], dirs, rtol=1e-6)
    assert float(norm.min()) >= 1.0


def test_orbit_keeps_pivot_centred_and_distance():
    rng = np.random.default_rng(3)
    c2w, pivot = _random_pose(rng)
    out = np.asarray(g.orbit(c2w, pivot, 0.4, -0.3))
    to_pivot = pivot - out[:3, 3]
    dist = np.linalg.norm(to_pivot)
    assert dist == pytest.approx(np.linalg.norm(pivot - c2w[:3, 3]), rel=1e-5)
    np.testing.assert_allclose(out[:3, 2], to_pivot / dist, atol=1e-5)
    np.testing.assert_allclose(out[:3, :3].T @ out[:3, :3], np.eye(3), atol=1e-5)
    assert out[:3, 0] @ cameras_np.WORLD_UP == pytest.approx(0.0, abs=1e-5)  # no roll added
    assert not np.allclose(out, c2w, atol=1e-2)  # it did move


# --------------------------------------------------------------------------- contraction


def _contract_ref(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n <= 1.0, x, (2.0 - 1.0 / np.maximum(n, 1e-300)) * x / np.maximum(n, 1e-300))


def test_contract_identity_inside_and_matches_reference():
    rng = np.random.default_rng(4)
    inside = rng.normal(size=(64, 3))
    inside *= rng.uniform(0, 0.999, (64, 1)) / np.linalg.norm(inside, axis=-1, keepdims=True)
    np.testing.assert_array_equal(g.contract(inside.astype(np.float32)), inside.astype(np.float32))
    x = rng.normal(size=(256, 3)) * np.exp(rng.uniform(-3.0, 8.0, (256, 1)))
    np.testing.assert_allclose(
        g.contract(x.astype(np.float32)), _contract_ref(x), rtol=2e-6, atol=1e-6
    )
    np.testing.assert_allclose(g.contract_to_unit(x), 0.5 * _contract_ref(x), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(g.inverse_contract(g.contract(x)), x, rtol=2e-3)


def test_contract_continuous_bounded_monotone_and_finite_gradients():
    direction = np.array([0.48, -0.6, 0.64])  # unit
    below, above = g.contract((1.0 - 1e-4) * direction), g.contract((1.0 + 1e-4) * direction)
    np.testing.assert_allclose(below, above, atol=3e-4)
    huge = g.contract(1e10 * direction)
    # 2 - 1e-10 rounds to 2 in float32: "bounded by 2" is the float statement.
    assert np.all(np.isfinite(huge)) and float(jnp.linalg.norm(huge)) <= 2.0
    assert float(jnp.linalg.norm(huge)) == pytest.approx(2.0, rel=1e-6)
    radii = np.geomspace(1e-3, 1e6, 200)
    norms = jnp.linalg.norm(g.contract(radii[:, None] * direction), axis=-1)
    assert np.all(np.diff(np.asarray(norms)) >= 0.0) and np.all(np.asarray(norms) < 2.0)

    grad = jax.grad(lambda x: jnp.sum(g.contract(x)))
    g0 = grad(jnp.zeros(3))
    np.testing.assert_allclose(g0, np.ones(3))  # identity near 0
    g_far = grad(jnp.asarray(1e8 * direction, jnp.float32))
    assert np.all(np.isfinite(g_far)) and float(jnp.abs(g_far).max()) < 1e-6


# --------------------------------------------------------------------------- rendering


def test_volume_render_homogeneous_slab_closed_forms():
    sigma, a, b, n = 1.5, 2.0, 4.0, 2000
    edges = np.linspace(1.0, 5.0, n + 1)
    mids = 0.5 * (edges[1:] + edges[:-1])
    dens = np.where((mids > a) & (mids < b), sigma, 0.0)
    out = g.volume_render(dens, np.ones((n, 1)), edges)
    length = b - a
    opacity = 1.0 - np.exp(-sigma * length)
    after = np.searchsorted(mids, b)
    assert float(out["transmittance"][after]) == pytest.approx(np.exp(-sigma * length), rel=1e-4)
    assert float(out["final_transmittance"]) == pytest.approx(np.exp(-sigma * length), rel=1e-4)
    assert float(out["opacity"]) == pytest.approx(opacity, rel=1e-5)
    np.testing.assert_allclose(out["weights"].sum(), out["opacity"], rtol=1e-6)
    # E[t] over the slab: ∫_a^b t σ e^{-σ(t-a)} dt / opacity.
    integral = a * opacity + 1.0 / sigma - np.exp(-sigma * length) * (length + 1.0 / sigma)
    assert float(out["depth_normalized"]) == pytest.approx(integral / opacity, rel=1e-5)
    assert float(out["depth"]) == pytest.approx(integral, rel=1e-5)
    # E[1/t]: ∫ σ e^{-σ(t-a)} / t dt, by fine quadrature.
    tq = np.linspace(a, b, 200001)
    disp = np.trapezoid(sigma * np.exp(-sigma * (tq - a)) / tq, tq)
    assert float(out["disparity"]) == pytest.approx(disp, rel=1e-4)


def test_volume_render_opaque_sample_background_and_infinite_edge():
    edges = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    dens = np.array([0.0, 0.0, 1e4, 0.7, 0.7])
    colors = np.arange(15.0).reshape(5, 3)
    out = g.volume_render(dens, colors, edges, background=np.array([9.0, 9.0, 9.0]))
    np.testing.assert_allclose(out["weights"], [0, 0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out["color"], colors[2], atol=1e-4)
    assert float(out["depth"]) == pytest.approx(3.5, rel=1e-5)

    dens = np.array([0.3, 0.2, 0.1, 0.4, 0.05])
    bg = np.array([0.2, 0.5, 0.9])
    with_bg = g.volume_render(dens, colors, edges, background=bg)
    without = g.volume_render(dens, colors, edges)
    t_final = np.exp(-dens.sum())
    assert float(with_bg["final_transmittance"]) == pytest.approx(t_final, rel=1e-5)
    np.testing.assert_allclose(with_bg["color"] - without["color"], t_final * bg, rtol=1e-4)
    assert float(with_bg["depth"]) == pytest.approx(float(without["depth"]))
    # delta_scale (|d| for z-depth edges) is the same as scaling the densities.
    scaled = g.volume_render(dens, colors, edges, delta_scale=np.float32(2.0))
    np.testing.assert_allclose(
        scaled["weights"], g.volume_render(2.0 * dens, colors, edges)["weights"], rtol=1e-6
    )

    # far = inf: the last sample takes everything left, and nothing is NaN (nor its gradient).
    inf_edges = np.array([1.0, 2.0, 4.0, np.inf])
    for last in (0.5, 0.0):
        dens = jnp.array([0.1, 0.2, last])
        out = g.volume_render(dens, np.ones((3, 2)), inf_edges, background=np.zeros(2))
        for value in out.values():
            assert np.all(np.isfinite(value))
        expected_opacity = 1.0 if last > 0 else 1.0 - np.exp(-0.1 - 0.4)
        assert float(out["opacity"]) == pytest.approx(expected_opacity, rel=1e-6)
        grad = jax.grad(lambda d: g.volume_render(d, jnp.ones((3, 2)), inf_edges)["depth"])(dens)
        assert np.all(np.isfinite(grad))
    assert float(out["depth"]) < np.inf and float(out["disparity"]) > 0.0


# --------------------------------------------------------------------------- triplane


def _triplane_ref(planes, points, outside="border"):
    """Brute-force float64 bilinear: tent weights over every texel, with the border clamp
    or (zeros) none: beyond the edge the tents of texels that exist fade out."""
    planes, points = np.asarray(planes, np.float64), np.asarray(points, np.float64)
    res = planes.shape[1]
    lo, hi = (0.0, res - 1.0) if outside == "border" else (-np.inf, np.inf)
    out = []
    for p, (a, b) in enumerate(geo.PLANE_AXES):
        fu = np.clip(((points[:, a] + 1.0) * res - 1.0) / 2.0, lo, hi)
        fv = np.clip(((points[:, b] + 1.0) * res - 1.0) / 2.0, lo, hi)
        idx = np.arange(res)
        wu = np.maximum(0.0, 1.0 - np.abs(fu[:, None] - idx))  # [N, R] over columns
        wv = np.maximum(0.0, 1.0 - np.abs(fv[:, None] - idx))  # [N, R] over rows
        out.append(np.einsum("ni,nj,ijc->nc", wv, wu, planes[p]))
    return np.stack(out, 1)


def test_triplane_texel_centres_and_midpoints():
    rng = np.random.default_rng(5)
    res, ch = 4, 3
    planes = rng.normal(size=(3, res, res, ch)).astype(np.float32)
    centres = -1.0 + (2.0 * np.arange(res) + 1.0) / res
    rows, cols = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
    for p, (a, b) in enumerate(geo.PLANE_AXES):
        pts = rng.uniform(-1.0, 1.0, (res, res, 3))  # the third axis is irrelevant
        pts[..., a], pts[..., b] = centres[cols], centres[rows]
        feats = g.triplane_features(planes, pts.astype(np.float32))
        np.testing.assert_allclose(feats[..., p, :], planes[p], atol=1e-6)
        # Half-way between horizontal and between vertical neighbours: their means.
        mid_u = pts[:, :-1].copy()
        mid_u[..., a] = 0.5 * (centres[cols[:, :-1]] + centres[cols[:, 1:]])
        np.testing.assert_allclose(
            g.triplane_features(planes, mid_u)[..., p, :],
            0.5 * (planes[p][:, :-1] + planes[p][:, 1:]),
            atol=1e-6,
        )
        mid_v = pts[:-1].copy()
        mid_v[..., b] = 0.5 * (centres[rows[:-1]] + centres[rows[1:]])
        np.testing.assert_allclose(
            g.triplane_features(planes, mid_v)[..., p, :],
            0.5 * (planes[p][:-1] + planes[p][1:]),
            atol=1e-6,
        )


def test_triplane_matches_bruteforce_reference_batched_and_reductions():
    rng = np.random.default_rng(6)
    planes = rng.normal(size=(2, 3, 5, 5, 4)).astype(np.float32)
    points = rng.uniform(-1.15, 1.15, (2, 6, 7, 3)).astype(np.float32)  # some outside
    feats = g.triplane_features(planes, points)
    assert feats.shape == (2, 6, 7, 3, 4)
    for i in range(2):
        ref = _triplane_ref(planes[i], points[i].reshape(-1, 3)).reshape(6, 7, 3, 4)
        np.testing.assert_allclose(feats[i], ref, atol=1e-5)
    np.testing.assert_allclose(g.triplane_features(planes, points, "sum"), feats.sum(-2), 1e-6)
    np.testing.assert_allclose(
        g.triplane_features(planes, points, "mean"), feats.mean(-2), rtol=1e-6
    )
    np.testing.assert_array_equal(
        g.triplane_features(planes, points, "concat"), feats.reshape(2, 6, 7, 12)
    )
    with pytest.raises(ValueError):
        g.triplane_features(planes, points, "max")


def test_triplane_zero_padding_fades_to_zero_outside_the_box():
    """outside='zeros' (EG3D's grid_sample padding) against the brute-force tents: equal
    to the border lookup inside the texel centres, half the border texel half a texel
    beyond it, zero from a texel beyond."""
    rng = np.random.default_rng(7)
    planes = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    points = rng.uniform(-1.6, 1.6, (200, 3)).astype(np.float32)
    feats = g.triplane_features(planes, points, outside="zeros")
    np.testing.assert_allclose(feats, _triplane_ref(planes, points, "zeros"), atol=1e-5)
    inside = rng.uniform(-0.75, 0.75, (50, 3)).astype(np.float32)  # within the centres
    np.testing.assert_allclose(g.triplane_features(planes, inside, outside="zeros"),
                               g.triplane_features(planes, inside), atol=1e-6)
    edge = np.asarray([[1.0, 0.0, 0.0], [1.5, 0.0, 0.0]], np.float32)  # x at 1 and beyond
    xy = np.asarray(g.triplane_features(planes, edge, outside="zeros"))[:, 0]
    border = np.asarray(g.triplane_features(planes, edge))[:, 0]
    np.testing.assert_allclose(xy[0], 0.5 * border[0], atol=1e-6)
    np.testing.assert_array_equal(xy[1], 0.0)


def _pull_push_reference(values, coverage):
    """Pull-push in float64 with explicit loops over texels (the recursion of Gortler et al.
    1996 written out), for one plane [R, R, C]."""
    res = values.shape[0]
    if res == 1 or res % 2:
        total = coverage.sum()
        parent = (coverage[..., None] * values).sum((0, 1)) / max(total, 1e-12)
        up = np.broadcast_to(parent, values.shape)
    else:
        half = res // 2
        coarse = np.zeros((half, half, values.shape[-1]))
        weight = np.zeros((half, half))
        for i in range(res):
            for j in range(res):
                coarse[i // 2, j // 2] += coverage[i, j] * values[i, j]
                weight[i // 2, j // 2] += coverage[i, j]
        coarse /= np.maximum(weight, 1e-12)[..., None]
        filled = _pull_push_reference(coarse, np.minimum(weight, 1.0))
        up = np.array([[filled[i // 2, j // 2] for j in range(res)] for i in range(res)])
    return coverage[..., None] * values + (1.0 - coverage[..., None]) * up


def test_pull_push_fill_matches_reference_keeps_covered_texels_and_extends_a_lone_one():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(2, 8, 8, 3))
    coverage = np.where(rng.uniform(size=(2, 8, 8)) < 0.3, rng.uniform(0.2, 1.0, (2, 8, 8)), 0.0)
    coverage[:, :2, :2] = 1.0  # a fully observed corner
    fill = jax.jit(geo.pull_push_fill)
    filled = np.asarray(fill(values.astype(np.float32), coverage.astype(np.float32)))
    for p in range(2):
        np.testing.assert_allclose(filled[p], _pull_push_reference(values[p], coverage[p]),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(filled[:, :2, :2], values[:, :2, :2], rtol=1e-6)
    # Holes are convex combinations of what was observed, never beyond it.
    observed = values[coverage > 0]
    assert filled.min() >= observed.min() - 1e-5 and filled.max() <= observed.max() + 1e-5
    # One observed texel of a 6 × 6 plane (6 → 3 is odd: the whole-plane mean) fills it all.
    lone = np.zeros((1, 6, 6))
    lone[0, 4, 1] = 1.0
    value = np.full((1, 6, 6, 2), 7.0)
    value[0, 4, 1] = [2.0, -1.0]
    np.testing.assert_allclose(fill(value, lone), np.broadcast_to([2.0, -1.0], (1, 6, 6, 2)),
                               rtol=1e-6)
    # Nothing observed: zeros, not NaN.
    assert np.all(np.asarray(fill(value, np.zeros((1, 6, 6)))) == 0.0)


# --------------------------------------------------------------------------- sampling


def test_splat_is_the_adjoint_of_the_lookup_and_lands_on_texel_centres():
    rng = np.random.default_rng(12)
    res, channels = 6, 2
    points = rng.uniform(-1.2, 1.2, (40, 3)).astype(np.float32)  # some clamp at the border
    features = rng.normal(size=(40, 3, channels)).astype(np.float32)
    planes = rng.normal(size=(3, res, res, channels)).astype(np.float32)
    sums, weights = jax.jit(geo.splat_to_triplane, static_argnums=2)(points, features, res)
    looked_up = g.triplane_features(planes, points)  # [N, 3, C]
    # <lookup(P, x), f> = <P, splat(x, f)>: the same bilinear weights, transposed.
    assert float(jnp.sum(looked_up * features)) == pytest.approx(float(jnp.sum(planes * sums)),
                                                                 rel=1e-5)
    np.testing.assert_allclose(jnp.sum(weights, axis=(1, 2)), [40.0] * 3, rtol=1e-5)
    # A point on a texel centre of every plane puts its whole weight there.
    centre = -1.0 + (2.0 * np.array([1, 4, 2]) + 1.0) / res  # texel indices x=1, y=4, z=2
    sums, weights = geo.splat_to_triplane(centre[None], np.ones((1, 3, 1)), res)
    for plane, (a, b) in enumerate(geo.PLANE_AXES):
        idx = np.array([1, 4, 2])
        expected = np.zeros((res, res))
        expected[idx[b], idx[a]] = 1.0  # row from the plane's second axis, column its first
        np.testing.assert_allclose(weights[plane], expected, atol=1e-6)
        np.testing.assert_allclose(sums[plane, ..., 0], expected, atol=1e-6)


def test_stratified_samples_bins_sorted_and_infinite_far():
    key = jax.random.PRNGKey(0)
    near = np.array([[0.5], [1.0]])
    for far in (np.array([[4.0], [8.0]]), np.inf):
        t, edges = g.stratified_samples(key, near, far, 16, (2, 3))
        assert t.shape == (2, 3, 16) and edges.shape == (2, 3, 17)
        assert np.all(np.isfinite(t))
        assert np.all(np.diff(np.asarray(t), axis=-1) > 0.0)
        assert np.all((edges[..., :-1] <= t) & (t <= edges[..., 1:]))
        np.testing.assert_allclose(edges[..., 0], np.broadcast_to(near, (2, 3)))
        assert np.all(edges[..., -1] == np.broadcast_to(far, (2, 3)))
        # Equal bins in disparity.
        np.testing.assert_allclose(
            np.diff(1.0 / np.asarray(edges), axis=-1).std(-1), 0.0, atol=1e-5
        )
    t_mid, edges = g.stratified_samples(None, 1.0, np.inf, 4, (), randomized=False)
    np.testing.assert_allclose(t_mid, 1.0 / np.array([0.875, 0.625, 0.375, 0.125]), rtol=1e-6)
    np.testing.assert_allclose(edges, [1.0, 4.0 / 3.0, 2.0, 4.0, np.inf], rtol=1e-6)
    np.testing.assert_array_equal(
        g.merge_samples(jnp.array([1.0, 3.0]), jnp.array([2.0, 0.5, 4.0])),
        [0.5, 1.0, 2.0, 3.0, 4.0],
    )
    np.testing.assert_allclose(
        g.edges_from_samples(jnp.array([1.0, 2.0, 4.0]), 0.5, np.inf), [0.5, 1.5, 3.0, np.inf]
    )


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_sample_pdf_follows_weight_cdf(space):
    num = 4096
    inf = space == "disparity"
    edges = np.array([1.0, 1.5, 2.5, 3.0, 5.0, np.inf if inf else 9.0])
    weights = np.array([0.1, 0.0, 0.4, 0.3, 0.2])
    coord = (lambda t: 1.0 / t) if inf else (lambda t: t)
    key = jax.random.PRNGKey(1)
    batch_edges = np.stack([edges, edges])
    batch_weights = np.stack([weights, 3.0 * weights])  # scale must not matter
    t = g.sample_pdf(key, batch_edges, batch_weights, num, space=space)
    t_det = g.sample_pdf(None, edges, weights, num, randomized=False, space=space)
    c_edges, cdf = coord(edges), np.concatenate([[0.0], np.cumsum(weights)])
    for samples in (*np.asarray(t, np.float64), np.asarray(t_det, np.float64)):
        assert np.all(np.isfinite(samples)) and np.all(np.diff(samples) >= 0.0)
        in_zero_bin = (samples > edges[1]) & (samples < edges[2])
        assert not in_zero_bin.any()
        # Analytic CDF of the piecewise-constant density (constant in `space` within a bin).
        c = coord(samples)
        i = np.clip(np.searchsorted(edges, samples, side="right") - 1, 0, len(weights) - 1)
        analytic = cdf[i] + weights[i] * (c - c_edges[i]) / (c_edges[i + 1] - c_edges[i])
        k = np.arange(num)
        ks = max(np.max((k + 1) / num - analytic), np.max(analytic - k / num))
        # Stratified u's put exactly one sample per 1/N of probability: KS <= 1/N (+ fp).
        assert ks < 1.5 / num, ks
    grad = jax.grad(lambda w: jnp.sum(g.sample_pdf(key, edges, w, 8, space=space)))(
        jnp.asarray(weights)
    )
    np.testing.assert_array_equal(grad, 0.0)  # stop_gradient on resampled distances


def test_sample_pdf_zero_weights_fall_back_to_uniform():
    edges = np.array([1.0, 2.0, 3.0, 4.0])
    t = g.sample_pdf(None, edges, np.zeros(3), 6, randomized=False, space="depth")
    np.testing.assert_allclose(t, 1.0 + (np.arange(6) + 0.5) / 2.0, rtol=1e-6)


def test_bfloat16_inputs():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(8, 3)) * 3.0, jnp.bfloat16)
    c = g.contract(x)
    assert c.dtype == jnp.bfloat16
    np.testing.assert_allclose(c.astype(np.float32), _contract_ref(x.astype(np.float32)), atol=2e-2)
    planes = jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.bfloat16)
    feats = g.triplane_features(planes, 0.5 * c)
    assert feats.dtype == jnp.bfloat16
    ref = _triplane_ref(planes.astype(np.float32), 0.5 * c.astype(np.float32))
    np.testing.assert_allclose(feats.astype(np.float32), ref, atol=3e-2)
    out = g.volume_render(
        jnp.full((4,), 0.5, jnp.bfloat16), jnp.ones((4, 2), jnp.bfloat16), jnp.arange(5.0)
    )
    assert out["color"].dtype == jnp.float32  # rendering accumulates in float32
    assert float(out["opacity"]) == pytest.approx(1.0 - np.exp(-2.0), rel=1e-6)


# --------------------------------------------------------------------------- warps


def test_bilinear_sample_pixel_centres_and_linear_ramps():
    rng = np.random.default_rng(11)
    image = rng.uniform(size=(5, 7, 2)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(5), np.arange(7), indexing="ij")
    centres = np.stack([cols + 0.5, rows + 0.5], -1)
    np.testing.assert_allclose(jax.jit(geo.bilinear_sample)(image, centres), image, atol=1e-6)
    # On an affine image bilinear sampling is exact anywhere inside the centres' range.
    ramp = (0.3 * cols + 0.7 * rows + 1.0).astype(np.float32)[..., None]
    uv = rng.uniform([0.5, 0.5], [6.5, 4.5], size=(20, 2))
    expected = 0.3 * (uv[:, 0] - 0.5) + 0.7 * (uv[:, 1] - 0.5) + 1.0
    np.testing.assert_allclose(jax.jit(geo.bilinear_sample)(ramp, uv)[:, 0], expected, atol=1e-5)


def test_backward_warp_fronto_parallel_plane_and_sky():
    """A camera moved sideways by t sees a plane at depth d shifted by f·t/d pixels; the
    sky (infinite depth) does not move under a translation."""
    size, depth, shift_x = 32, 4.0, 0.5
    k = np.asarray(g.intrinsics_from_fov(60.0, size, size))
    source = np.eye(4)
    target = np.eye(4)
    target[0, 3] = shift_x
    cols = np.arange(size, dtype=np.float32)
    image = np.broadcast_to((0.05 * cols)[None, :, None], (size, size, 1)).astype(np.float32)
    warp = jax.jit(geo.backward_warp)
    warped, visible = warp(image, k, source, np.full((size, size), depth), k, target)
    pixels = k[0, 0] * shift_x / depth
    expected = np.clip(cols + pixels, 0, size - 1) * 0.05
    inside = cols + pixels <= size - 1
    np.testing.assert_allclose(np.asarray(warped)[:, inside, 0],
                               np.broadcast_to(expected[inside], (size, inside.sum())), atol=1e-4)
    assert np.asarray(visible)[:, cols + 0.5 + pixels < size].all()
    assert not np.asarray(visible)[:, cols + 0.5 + pixels > size].any()
    sky, sky_visible = warp(image, k, source, np.full((size, size), np.inf), k, target)
    np.testing.assert_allclose(sky, image, atol=1e-3)
    assert np.asarray(sky_visible).all()


def test_backward_warp_reproduces_ray_cast_novel_views():
    """Warping a synthetic scene's canonical view into its ±20° views with their true depth
    gives the ray caster's own pixels wherever the source sees the same surface point
    (Lambertian shading and a direction-only sky are view-independent)."""
    example = raycast.generate_example("validation", 3, 64)
    image = example["image"].astype(np.float32) / 255.0
    source_depth = np.where(np.isfinite(example["depth"]), example["depth"], 1e6)
    views = example["novel_views"]
    warp = jax.jit(geo.backward_warp)
    for v in np.flatnonzero(np.abs(views["yaw_pitch"][:, 0]) > np.deg2rad(15)):
        k, c2w, depth = views["intrinsics"][v], views["cam_to_world"][v], views["depth"][v]
        warped, visible = warp(image, example["intrinsics"], example["cam_to_world"], depth, k,
                               c2w)
        # Unoccluded: the point's z in the source camera matches the source's depth there.
        origins, dirs = g.pixel_rays(k, c2w, 64, 64)
        points = origins + np.where(np.isfinite(depth), depth, 1e6)[..., None] * dirs
        uv, z = g.project(points, example["intrinsics"], example["cam_to_world"])
        seen = jax.jit(geo.bilinear_sample)(source_depth[..., None], uv)[..., 0]
        unoccluded = np.asarray(visible) & (np.abs(np.asarray(seen) - np.asarray(z)) < 0.02 * z)
        assert unoccluded.mean() > 0.5
        error = np.abs(np.asarray(warped) - views["image"][v] / 255.0).max(-1)[unoccluded]
        assert np.median(error) <= 2.0 / 255.0
