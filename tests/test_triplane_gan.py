"""The tri-plane GAN head (EG3D, Mimic3D) against closed forms, float64 numpy references
and invariances: Mimic3D's 3D-aware convolution input, the plane projections and EG3D's
frame, the importance sampler, windowed renders, the decoder's activations, the dual
discriminator's input, the fade-in blur, patch windows and the LPIPS refusal.

Tolerances are float32 rounding bounds: u = 2⁻²⁴ (tests/float_bounds.py) times the
number of rounded operations behind a value, times the magnitude of its terms.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override
from float_bounds import LAMBDA, UNIT_ROUNDOFF

from configs import eg3d, mimic3d
from vq3d_jax import geometry as geo
from vq3d_jax.geometry import pose_sampling
from vq3d_jax.models import eg3d as eg3d_model
from vq3d_jax.models.discriminator import DualDiscriminator
from vq3d_jax.models.mimic3d import aware3d
from vq3d_jax.models.stylegan2 import num_styles
from vq3d_jax.tasks.gan_task import GANTask
from vq3d_jax.tasks.gan_triplane import crop, gaussian_blur, random_windows

U = UNIT_ROUNDOFF


# ------------------------------------------------------------------ Mimic3D's aware3d


@pytest.mark.parametrize("plane", [0, 1, 2], ids=["xy", "yz", "zx"])
def test_aware3d_pools_the_other_planes_over_the_axis_this_plane_lacks(plane):
    """geometry/triplane.py's layout: xy[row y, col x], yz[row z, col y], zx[row x, col z].
    Plane p's output at (row, col) is [xy-slot, yz-slot, zx-slot] with p's own features in
    its slot and each other plane averaged over the axis p lacks, read at the coordinate
    p shares with it."""
    rng = np.random.default_rng(0)
    b, r, c = 2, 5, 3  # R = 5: a sum in place of a mean is off by 5×
    planes = rng.normal(size=(b, 3, r, r, c)).astype(np.float32)
    got = np.asarray(jax.jit(aware3d)(planes))[:, plane]
    xy, yz, zx = (planes[:, k].astype(np.float64) for k in range(3))

    def value(name, coords):
        """The plane `name` at a point with coordinates {axis: index}."""
        table, row_axis, col_axis = {"xy": (xy, "y", "x"), "yz": (yz, "z", "y"),
                                     "zx": (zx, "x", "z")}[name]
        return table[:, coords[row_axis], coords[col_axis]]

    own = ("xy", "yz", "zx")[plane]
    row_axis, col_axis = {"xy": ("y", "x"), "yz": ("z", "y"), "zx": ("x", "z")}[own]
    missing = ({"x", "y", "z"} - {row_axis, col_axis}).pop()
    expected = np.zeros((b, r, r, 3 * c))
    for i in range(r):
        for j in range(r):
            for slot, name in enumerate(("xy", "yz", "zx")):
                at = {row_axis: i, col_axis: j}
                if name == own:
                    feats = value(name, at)
                else:
                    feats = np.mean([value(name, {**at, missing: m}) for m in range(r)], 0)
                expected[:, i, j, slot * c:(slot + 1) * c] = feats
    # A float32 mean of R terms: ≤ (R + 1)·u·max|x| (R − 1 adds and a division).
    np.testing.assert_allclose(got, expected, rtol=0, atol=(r + 1) * U * np.abs(planes).max())


# ------------------------------------------------- plane projections and EG3D's frame


def test_a_point_lands_on_xy_yz_and_zx_at_its_own_coordinates():
    """Planes whose features are their texel centres (column coordinate, row
    coordinate): bilinear interpolation of a linear function is exact, so a point inside
    the centres reads (x, y) on xy, (y, z) on yz and (z, x) on zx."""
    res = 8
    centre = -1.0 + (2.0 * np.arange(res) + 1.0) / res  # align_corners=False
    cols, rows = np.meshgrid(centre, centre)  # [row, col]
    plane = np.stack([cols, rows], -1)
    planes = np.broadcast_to(plane, (3, res, res, 2)).astype(np.float32)
    points = np.random.default_rng(1).uniform(centre[0], centre[-1], (500, 3))
    points = points.astype(np.float32)
    got = np.asarray(jax.jit(geo.triplane_features)(planes, points))  # [N, 3, 2]
    x, y, z = points.T.astype(np.float64)
    expected = np.stack([np.stack([x, y], -1), np.stack([y, z], -1), np.stack([z, x], -1)], 1)
    # The texel coordinate ((p + 1)R − 1)/2 takes ≤ 4 roundings of values ≤ R: ≤ 4uR texels
    # = 8u in coordinates; each of the two lerps adds ≤ 3u (a subtraction, a product and
    # a sum of values ≤ 1) and each float32 centre ≤ u/2: ≤ 16u in all.
    np.testing.assert_allclose(got, expected, rtol=0, atol=16 * U)


def test_head_frame_sends_the_pose_centre_to_the_pivot_and_flips_y_and_z():
    """EG3D's world is ours flipped by F = diag(1, −1, −1) about the pose sphere's centre,
    which lands on `pivot`; a camera's label is that cam-to-world, row-major, then the
    intrinsics over the image size. Our reference camera is EG3D's frontal one: at
    pivot + (0, 0, radius), looking down −z."""
    # Dyadic pivot and radius: the frame's entries and the reference camera's label are
    # exact in float32, so those compare exactly.
    pivot = np.array([0.125, -0.25, 0.375])
    task = GANTask(override(eg3d.get_config("tiny"), {"model.triplane.pivot": tuple(pivot)}))
    head, poses, config = task.head, task.poses, task.config
    radius = config.camera.radius
    assert radius == 6.0
    centre = np.array([0.0, 0.0, radius])  # the sphere's centre, `radius` ahead of the
    np.testing.assert_array_equal(poses.center(), centre)  # reference camera at the origin
    np.testing.assert_array_equal(head.to_eg3d[:3, :3], np.diag([1.0, -1.0, -1.0]))
    np.testing.assert_array_equal(head.to_eg3d @ np.append(centre, 1.0), np.append(pivot, 1.0))

    frontal = np.eye(4)
    frontal[:3, :3] = np.diag([1.0, -1.0, -1.0])
    frontal[:3, 3] = pivot + [0.0, 0.0, radius]
    size = config.model.resolution
    focal = 0.5 * size / math.tan(math.radians(config.camera.fov_deg) / 2)
    intrinsics = np.array([[focal / size, 0.0, 0.5], [0.0, focal / size, 0.5], [0, 0, 1]])

    cameras = np.concatenate([np.asarray(poses.reference_camera())[None],
                              np.asarray(pose_sampling.sample_cameras(
                                  jax.random.key(0), 4, poses)[0])]).astype(np.float32)
    labels = np.asarray(jax.jit(head.label)(cameras), np.float64)
    assert labels.shape == (5, 25)
    np.testing.assert_array_equal(labels[0, :16], frontal.reshape(16))
    # By hand: R → F·R, t → F·(t − centre) + pivot, in float64.
    flip = np.diag([1.0, -1.0, -1.0])
    expected = np.zeros((4, 4, 4))
    for i, camera in enumerate(cameras[1:].astype(np.float64)):
        expected[i, :3, :3] = flip @ camera[:3, :3]
        expected[i, :3, 3] = flip @ (camera[:3, 3] - centre) + pivot
        expected[i, 3, 3] = 1.0
    # A float32 4×4 product: 4 products and 3 sums per entry, ≤ 4u·Σₖ|aᵢₖ||bₖⱼ| with
    # |a| ≤ 1 on the rotation and ≤ radius + 1 on the shift; intrinsics: deg→rad, tan,
    # ×, ÷: ≤ 6u relative.
    scale = 4 * U * (np.abs(cameras[1:]).sum(1) + radius + 1.0)
    np.testing.assert_allclose(labels[1:, :16], expected.reshape(4, 16), rtol=0,
                               atol=scale.max())
    np.testing.assert_allclose(labels[:, 16:], np.broadcast_to(intrinsics.reshape(9), (5, 9)),
                               rtol=6 * U, atol=0)


# -------------------------------------------------------------- importance sampling


@functools.partial(jax.jit, static_argnums=0)
def _slab_depths(options, d0, d1, directions, key):
    """The depths `render_rays` samples along rays from the origin through an opaque slab
    d0 ≤ z ≤ d1 (camera z = 1: a point's z is its t)."""

    def field(points):
        z = points[..., 2]
        return jnp.where((z >= d0) & (z <= d1), 1e4, 0.0), jnp.zeros(z.shape + (1,))

    origins = jnp.zeros_like(directions)
    return geo.render_rays(field, origins, directions, key, options)["t"]


@pytest.mark.parametrize("slab_bin", [0, 17, 47])
def test_importance_samples_follow_the_blur_pooled_padded_weights(slab_bin):
    """EG3D's ray schedule (ffhq512: 48 stratified + 48 importance samples in depth,
    blur-pooled coarse weights + 0.01) on a field that is an opaque slab filling one
    coarse bin k: the coarse weights are one-hot at k (σδ > 200 makes α = 1 in float32),
    so the resampling weights are 1.01 at k, 0.51 beside it and 0.01 elsewhere (mip-NeRF's
    blur pool in closed form). sample_pdf stratifies its u's (one per 1/M of probability),
    so a bin of probability p gets more than M·p − 2 and at most M·p + 2 of the M samples
    on every ray: a bound, not a probability."""
    opts = GANTask(eg3d.get_config("ffhq512")).head.options
    assert (opts.spacing, opts.weight_padding, opts.randomized) == ("depth", 0.01, True)
    n, m = opts.num_samples, opts.num_importance
    # The coarse bins render_rays draws (float32 edges: the slab and the counts agree with
    # its bins to the bit).
    _, edges = geo.stratified_samples(None, opts.near, opts.far, n, (), False, "depth")
    edges = np.asarray(edges)
    num_rays = 64
    xy = np.random.default_rng(2).uniform(-0.1, 0.1, (num_rays, 2))
    directions = np.concatenate([xy, np.ones((num_rays, 1))], -1).astype(np.float32)
    t = np.asarray(_slab_depths(opts, edges[slab_bin], edges[slab_bin + 1], directions,
                                jax.random.key(3)))
    assert t.shape == (num_rays, n + m)
    # Every coarse bin holds one stratified sample; the rest are the importance samples.
    bins = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n - 1)
    per_bin = np.stack([np.bincount(row, minlength=n) for row in bins]) - 1
    assert per_bin.min() >= 0 and np.all(per_bin.sum(1) == m)
    weights = np.full(n, opts.weight_padding)
    weights[slab_bin] += 1.0
    weights[[b for b in (slab_bin - 1, slab_bin + 1) if 0 <= b < n]] += 0.5
    expected = m * weights / weights.sum()
    near_slab = slice(max(slab_bin - 2, 0), slab_bin + 3)
    assert np.all(per_bin > expected - 2) and np.all(per_bin <= expected + 2), (
        per_bin[:, near_slab], expected[near_slab])


# ------------------------------------------------------------- Mimic3D's windows


def test_a_window_render_equals_the_same_pixels_of_the_full_render():
    """Mimic3D's patch render (its own camera: the principal point moved by the corner)
    equals the crop of the full-image render, at windows touching every edge.

    Per ray both compute the same expression on the same values (u − c_x is exact in
    both: small integers and halves). What differs is how XLA vectorises and blocks it
    for the two shapes (the decoder's matmuls, FMA contraction; ~7% of the pixels differ
    by an ulp or two), i.e. the rounding of the same ~2¹⁷ operations per pixel (36 field
    samples × (2 tri-plane lookups of 3 × 16 channels + a 16→32→17 MLP) ≈ 3·10³ each):
    tests/float_bounds.py's probabilistic bound 2λ√N·u of the output's scale (1 for
    the image and opacity, far for the depth)."""
    config = mimic3d.get_config("tiny_stage2")
    task = GANTask(config)
    head, g = task.head, task.head.generator
    corners = np.array([[0, 0], [20, 16], [0, 16], [20, 0], [13, 5]], np.int32)
    height, width = 12, 16  # h ≠ w: a swapped window shape or corner fails too
    assert head.size == 32
    b = len(corners)
    ws = jax.random.normal(jax.random.key(1), (b, num_styles(g.resolution), config.model.w_dim))
    t = config.model.triplane
    coarse = jax.random.normal(jax.random.key(2), (b, 3, t.plane_resolution,
                                                   t.plane_resolution, t.plane_channels))

    @jax.jit
    def make(key):
        """The generator's parts a direct render reads, randomly initialised: the 3D
        super-resolution (for the detail planes of ws) and the decoder."""
        sr_key, decoder_key, noise_key = jax.random.split(key, 3)
        params = {**g.init({"params": sr_key, "noise": sr_key}, coarse, ws,
                           method=eg3d_model.TriplaneGenerator.detail)["params"],
                  **g.init(decoder_key, coarse[:1, 0, 0, 0],
                           method=eg3d_model.TriplaneGenerator.decode)["params"]}
        return params, {"coarse": coarse, "detail": head.detail(params, coarse, ws, noise_key)}

    params, planes = make(jax.random.key(0))
    cameras = pose_sampling.sample_cameras(jax.random.key(3), b, task.poses)[0][:, None]
    full = jax.jit(lambda: head.render_direct(params, planes, cameras, jax.random.key(4),
                                              randomized=False))()
    window = jax.jit(lambda c: head.render_direct(params, planes, cameras, jax.random.key(5),
                                                  window=(c, height, width),
                                                  randomized=False))(corners)
    bound = 2 * LAMBDA * math.sqrt(2**17) * U
    for key, scale in (("image", 1.0), ("opacity", 1.0), ("depth", config.model.far)):
        assert window[key].shape[:4] == (b, 1, height, width)
        for i, (top, left) in enumerate(corners):
            np.testing.assert_allclose(
                window[key][i, 0], full[key][i, 0, top:top + height, left:left + width],
                rtol=0, atol=bound * scale, err_msg=f"{key} at corner {(top, left)}")


# ------------------------------------------------------------------ the decoder


def test_density_is_softplus_of_raw_minus_one():
    raw = np.linspace(-30.0, 30.0, 241).astype(np.float32)
    got = np.asarray(jax.jit(eg3d_model.density)(raw), np.float64)
    y = raw.astype(np.float64) - 1.0
    expected = np.logaddexp(0.0, y)
    # raw − 1 rounds by ≤ u|y| (softplus' slope is sigmoid(y)); softplus itself (exp,
    # log1p, a max and an add) ≤ 4u relative.
    tol = U * np.abs(y) / (1.0 + np.exp(-y)) + 4 * U * expected
    assert np.all(np.abs(got - expected) <= tol)


def test_triplane_decoder_is_fc_softplus_fc_with_raw_sigma_and_widened_sigmoid():
    """raw σ = out₀ and features = sigmoid(out₁..)·1.002 − 0.001 (EG3D's OSG decoder) of
    out = FC(softplus(FC(x))), equalised layers (W/√fan_in), against float64 numpy."""
    c, hidden, feats = 6, 8, 5
    decoder = eg3d_model.TriplaneDecoder(hidden, feats)
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(64, c)) * 2.0).astype(np.float32)
    params = nn.meta.unbox(decoder.init(jax.random.key(0), x[:1]))["params"]
    params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    raw, got = (np.asarray(a, np.float64) for a in jax.jit(decoder.apply)({"params": params}, x))

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    w0, w1 = p["fc0"]["kernel"] / np.sqrt(c), p["fc1"]["kernel"] / np.sqrt(hidden)
    x64 = x.astype(np.float64)
    h = x64 @ w0 + p["fc0"]["bias"]
    a = np.logaddexp(0.0, h)
    out = a @ w1 + p["fc1"]["bias"]
    expected = 1.002 / (1.0 + np.exp(-out[:, 1:])) - 0.001
    # Forward error bound: a K-term dot product + bias (weights scaled in float32) is off
    # by ≤ (K + 2)u·Σ|terms|; softplus (slope ≤ 1) adds ≤ 4u·|a|; sigmoid's slope ≤ 1/4
    # (×1.002) and its evaluation, ×, − add ≤ 4u.
    err_h = (c + 2) * U * (np.abs(x64) @ np.abs(w0) + np.abs(p["fc0"]["bias"]))
    err_a = err_h + 4 * U * a
    err_out = ((hidden + 2) * U * (a @ np.abs(w1) + np.abs(p["fc1"]["bias"]))
               + err_a @ np.abs(w1))
    assert np.all(np.abs(raw - out[:, 0]) <= err_out[:, 0])
    assert np.all(np.abs(got - expected) <= 0.2505 * err_out[:, 1:] + 4 * U)


# ------------------------------------------------------ the dual discriminator's input


class _Inputs(nn.Module):
    """A 'network' that returns what it is given."""

    @nn.compact
    def __call__(self, images, condition=None):
        return images, condition


def _bilinear_upsample(images, size):
    """float64 bilinear resize up (half-pixel centres, edge-clamped: torch's
    align_corners=False), separable, explicit per output pixel."""
    r = images.shape[1]
    weights = np.zeros((size, r))
    for i in range(size):
        src = min(max((i + 0.5) * r / size - 0.5, 0.0), r - 1.0)
        lo = min(int(np.floor(src)), r - 2)
        weights[i, lo], weights[i, lo + 1] = 1.0 - (src - lo), src - lo
    return np.einsum("ik,jl,bklc->bijc", weights, weights, images.astype(np.float64))


def test_dual_discriminator_sees_the_image_then_the_upsampled_raw_image():
    rng = np.random.default_rng(5)
    image = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    raw = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    condition = rng.normal(size=(2, 25)).astype(np.float32)
    seen, passed = jax.jit(DualDiscriminator(_Inputs()).apply)({}, (image, raw), condition)
    assert seen.shape == (2, 16, 16, 6)
    np.testing.assert_array_equal(seen[..., :3], image)
    np.testing.assert_array_equal(passed, condition)
    # Two 1-D passes, each 2 non-zero weights (their computation and normalisation ≤ 4u
    # relative) times the input, summed: ≤ 6u·max|x| per pass.
    np.testing.assert_allclose(seen[..., 3:], _bilinear_upsample(raw, 16), rtol=0,
                               atol=12 * U * np.abs(raw).max())


# ------------------------------------------------------------- EG3D's fade-in blur


def test_gaussian_blur_is_the_normalised_base_two_gaussian_with_zero_padding():
    rng = np.random.default_rng(6)
    images = rng.normal(size=(2, 13, 11, 2)).astype(np.float32)
    blur = jax.jit(gaussian_blur, static_argnums=2)
    max_sigma, sigma = 2.5, 1.3
    got = np.asarray(blur(images, jnp.float32(sigma), max_sigma), np.float64)
    radius = math.floor(3 * sigma)
    x = np.arange(-radius, radius + 1)
    taps = 2.0 ** (-((x / sigma) ** 2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = np.pad(images.astype(np.float64), ((0, 0), (radius, radius), (radius, radius),
                                                (0, 0)))
    expected = np.zeros(images.shape)
    for i in range(images.shape[1]):
        for j in range(images.shape[2]):
            window = padded[:, i:i + 2 * radius + 1, j:j + 2 * radius + 1]
            expected[:, i, j] = np.einsum("bklc,kl->bc", window, kernel)
    # Each tap (exp2, a square, a division, normalisation over 2⌊3·max σ⌋ + 1 = 15 taps)
    # ≤ 18u relative; each pass sums 15 taps × values: ≤ 16u more. Taps sum to 1, so two
    # passes are within 2·34u·max|x|.
    np.testing.assert_allclose(got, expected, rtol=0, atol=68 * U * np.abs(images).max())
    np.testing.assert_array_equal(blur(images, jnp.float32(0.0), max_sigma), images)


# ---------------------------------------------------------------- patch windows


def test_random_windows_stay_inside_reach_every_corner_and_crop_slices():
    size, patch = 8, 5
    corners = np.asarray(jax.jit(random_windows, static_argnums=(1, 2))(
        jax.random.split(jax.random.key(7), 1000), size, patch))
    assert corners.min() >= 0 and corners.max() <= size - patch
    # 16 equally likely corners in 1000 draws: all appear (each misses with p ≈ e⁻⁶²).
    reached = {tuple(c) for c in corners}
    assert reached == {(i, j) for i in range(size - patch + 1) for j in range(size - patch + 1)}
    images = np.random.default_rng(8).normal(size=(16, size, size, 3)).astype(np.float32)
    got = np.asarray(jax.jit(crop, static_argnums=2)(images, corners[:16], patch))
    for image, (top, left), window in zip(images, corners[:16], got):
        np.testing.assert_array_equal(window, image[top:top + patch, left:left + patch])


# ----------------------------------------------------------------- the LPIPS refusal


def test_stage2_without_lpips_weights_is_refused_unless_the_preset_allows_l1(caplog):
    config = mimic3d.get_config("tiny_stage2")
    assert not config.loss.require_lpips and config.loss.lpips_weights == ""
    GANTask(config)
    assert "imitation loss is L1" in caplog.text
    at_scale = override(mimic3d.get_config("tiny_stage2"),
                        {"loss.require_lpips": True, "loss.lpips_weights": ""})
    with pytest.raises(ValueError, match="loss.lpips_weights"):
        GANTask(at_scale)

