"""GAN/R1/reconstruction losses and the StyleGAN2 residual discriminator."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vq3d_jax.losses import (
    l2_loss,
    nonsaturating_discriminator_loss,
    nonsaturating_generator_loss,
    psnr,
    r1_penalty,
)
from vq3d_jax.models.discriminator import ResidualDiscriminator
from vq3d_jax.nn.stylegan import EqualDense, blur_downsample, minibatch_stddev

TINY_D = dict(resolution=32, channel_base=256, channel_max=32)


def test_gan_losses_closed_form():
    zeros = jnp.zeros(5)
    assert float(nonsaturating_generator_loss(zeros)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(nonsaturating_discriminator_loss(zeros, zeros)) == pytest.approx(
        2 * math.log(2), rel=1e-6)
    real, fake = jnp.array([3.0, -1.0]), jnp.array([0.5, -40.0])
    softplus = lambda v: np.log1p(np.exp(v))
    expected = softplus(-np.asarray(real)).mean() + softplus(np.asarray(fake)).mean()
    out = nonsaturating_discriminator_loss(real, fake.astype(jnp.bfloat16))
    assert out.dtype == jnp.float32 and float(out) == pytest.approx(expected, rel=1e-5)
    assert float(nonsaturating_generator_loss(fake)) == pytest.approx(
        softplus(-np.asarray(fake)).mean(), rel=1e-5)


def test_l2_and_psnr():
    a = jnp.zeros((2, 4, 4, 3))
    b = a.at[0].set(0.1).at[1].set(0.2)
    assert float(l2_loss(a, b)) == pytest.approx((0.01 + 0.04) / 2, rel=1e-5)
    expected = [10 * np.log10(4.0 / 0.01), 10 * np.log10(4.0 / 0.04)]
    np.testing.assert_allclose(psnr(b, a, max_val=2.0), expected, rtol=1e-5)


def test_r1_penalty_linear_discriminator():
    # D(x) = <w, x> per image: ∇ₓD = w for every image, so R1 = ‖w‖².
    w = jax.random.normal(jax.random.key(0), (4, 4, 3))
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 3))
    r1 = r1_penalty(lambda im: jnp.sum(im * w, axis=(1, 2, 3)), x)
    assert r1.dtype == jnp.float32
    assert float(r1) == pytest.approx(float(jnp.sum(w**2)), rel=1e-5)
    # D(x) = ½‖x‖² per image: ∇ₓD = x, so R1 = mean_b ‖x_b‖².
    r1 = r1_penalty(lambda im: 0.5 * jnp.sum(im**2, axis=(1, 2, 3)), x)
    assert float(r1) == pytest.approx(float(jnp.mean(jnp.sum(x**2, axis=(1, 2, 3)))), rel=1e-5)


def test_equalized_dense_runtime_scaling():
    layer = EqualDense(features=3, activation=None, lr_multiplier=0.1, bias_init=1.0)
    x = jax.random.normal(jax.random.key(0), (2, 50))
    params = nn.meta.unbox(layer.init(jax.random.key(1), x))["params"]
    # Stored weights are N(0, 1/lr²); the forward rescales by lr/√fan_in.
    assert np.std(np.asarray(params["kernel"])) == pytest.approx(10.0, rel=0.2)
    expected = x @ params["kernel"] * (0.1 / math.sqrt(50)) + params["bias"] * 0.1
    np.testing.assert_allclose(layer.apply({"params": params}, x), expected, rtol=1e-5)
    np.testing.assert_allclose(params["bias"] * 0.1, 1.0, rtol=1e-6)


def test_blur_downsample_and_minibatch_stddev():
    const = jnp.full((1, 8, 8, 2), 3.0)
    down = blur_downsample(const)
    assert down.shape == (1, 4, 4, 2)
    # Unit DC gain: the interior of a constant image stays constant; each border
    # output loses exactly one 1/8 tap to the zero padding (pad 1 each side).
    np.testing.assert_allclose(down[0, 1:-1, 1:-1], 3.0, rtol=1e-6)
    np.testing.assert_allclose(down[0, 0, 1:-1], 3.0 * 7 / 8, rtol=1e-6)
    np.testing.assert_allclose(down[0, -1, -1], 3.0 * (7 / 8) ** 2, rtol=1e-6)
    x = jax.random.normal(jax.random.key(0), (6, 3, 3, 4))
    out = np.asarray(minibatch_stddev(x, group_size=4))  # 6 = 2 groups of 3 (divisor ≤ 4)
    assert out.shape == (6, 3, 3, 5)
    xs = np.asarray(x, np.float64)
    for i in range(6):
        members = xs[i % 2::2]  # sample i is in group i mod (N / G)
        expected = np.sqrt(members.var(axis=0) + 1e-8).mean()
        np.testing.assert_allclose(out[i, ..., 4], expected, rtol=1e-5)


@pytest.fixture(scope="module")
def disc():
    model = ResidualDiscriminator(**TINY_D)
    x = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3), minval=-1.0, maxval=1.0)
    boxed = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    return model, x, boxed, nn.meta.unbox(boxed)


def test_discriminator_logits_and_sensitivity(disc):
    model, x, _, params = disc
    apply = jax.jit(model.apply)
    x2 = x.at[1, 17, 5, 2].add(0.5)  # one pixel of one image
    logits, logits2 = apply(params, jnp.stack([x, x2]).reshape(8, 32, 32, 3)).reshape(2, 4)
    assert logits.shape == (4,) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    assert abs(float(logits2[1] - logits[1])) > 1e-6
    # Equalised lr keeps activations O(1) at init: logits neither vanish nor explode.
    assert 1e-3 < float(jnp.std(logits)) + float(jnp.mean(jnp.abs(logits))) < 1e2


def test_discriminator_params_and_r1(disc):
    model, x, boxed, params = disc
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= {"conv_in", "conv_out", None}
    assert params["params"]["b32_conv0"]["kernel"].shape == (3, 3, 8, 8)  # 256 // 32 = 8 ch
    assert params["params"]["b8_conv1"]["kernel"].shape == (3, 3, 32, 32)  # capped at 32
    r1 = jax.jit(lambda p, im: r1_penalty(lambda y: model.apply(p, y), im))(params, x)
    assert r1.dtype == jnp.float32 and float(r1) > 0


@pytest.mark.parametrize("res, base, cmax", [(64, 512, 32), (256, 32768, 512)])
def test_discriminator_other_resolutions(res, base, cmax):
    """64² (tiny) and the paper's 256² trace to [B] logits (shape-only, no compile)."""
    model = ResidualDiscriminator(resolution=res, channel_base=base, channel_max=cmax,
                                  dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, res, res, 3), jnp.float32)
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x))
    assert params["params"][f"b{res}_conv0"]["kernel"].dtype == jnp.float32
    out = jax.eval_shape(model.apply, params, x)
    assert out.shape == (2,) and out.dtype == jnp.float32
    if res == 256:
        assert params["params"]["from_rgb"]["kernel"].shape == (1, 1, 3, 128)
        assert params["params"]["b4_fc"]["kernel"].shape == (512 * 16, 512)


def test_scale_shift_alignment_equals_numpy_least_squares():
    from vq3d_jax.losses import align_scale_shift

    rng = np.random.default_rng(0)
    source = rng.uniform(0.1, 2.0, (3, 50))
    target = 1.7 * source - 0.3 + 0.05 * rng.normal(size=(3, 50))
    mask = rng.uniform(size=(3, 50)) > 0.3
    scale, shift = align_scale_shift(jnp.asarray(source), jnp.asarray(target), jnp.asarray(mask))
    for i in range(3):
        m = mask[i]
        design = np.stack([source[i][m], np.ones(m.sum())], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, target[i][m], rcond=None)
        np.testing.assert_allclose([scale[i], shift[i]], [a, b], rtol=1e-4, atol=1e-5)
    # No gradient flows through the fitted coefficients.
    grad = jax.grad(lambda s: jnp.sum(align_scale_shift(s, jnp.asarray(target))[0]))(
        jnp.asarray(source)
    )
    assert float(jnp.max(jnp.abs(grad))) == 0.0


def test_scale_shift_alignment_with_large_offset_matches_float64():
    """Pseudo-disparity far from 0 against its spread (offset/spread 100): the fit in
    float32 must still match float64 least squares (raw float32 sums were off by 0.5 %)."""
    from vq3d_jax.losses import align_scale_shift

    rng = np.random.default_rng(1)
    source = 100.0 + rng.uniform(-1.0, 1.0, (4, 1024))
    target = 0.37 * source - 30.0 + 0.01 * rng.normal(size=source.shape)
    scale, shift = align_scale_shift(jnp.asarray(source, jnp.float32),
                                     jnp.asarray(target, jnp.float32))
    for i in range(4):
        design = np.stack([source[i], np.ones(source.shape[1])], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, target[i], rcond=None)
        assert float(scale[i]) == pytest.approx(a, rel=1e-4)
        # The fitted line at the data's centre (what the loss compares) is exact.
        centre = source[i].mean()
        assert float(scale[i]) * centre + float(shift[i]) == pytest.approx(a * centre + b,
                                                                              abs=1e-4)


def test_depth_losses_closed_form():
    from vq3d_jax.losses import depth_losses

    # Pseudo disparity = 2·true + 1 per ray: alignment recovers the truth exactly.
    true = jnp.asarray([[0.5, 1.0, 0.25, 0.8]])
    pseudo = 2.0 * true + 1.0
    # Two samples per ray: one on the true disparity (weight 0.75), one 0.4 off (weight 0.25).
    sample_disp = jnp.stack([true, true + 0.4], axis=-1)
    weights = jnp.broadcast_to(jnp.asarray([0.75, 0.25]), sample_disp.shape)
    rendered = jnp.sum(weights * sample_disp, axis=-1)  # true + 0.1
    out = depth_losses(
        weights=weights, sample_disparity=sample_disp,
        rendered_disparity=rendered, pseudo_disparity=pseudo,
    )
    # Aligned to the rendered disparity (true + 0.1): pointwise = 0.75·0.1 + 0.25·0.3.
    np.testing.assert_allclose(out["aligned_target"], true + 0.1, atol=1e-5)
    assert float(out["weighted_pointwise"]) == pytest.approx(0.75 * 0.1 + 0.25 * 0.3, abs=1e-5)
    assert float(out["integrated"]) == pytest.approx(0.0, abs=1e-5)

    # Without alignment the target is the pseudo disparity itself (metric depth).
    raw = depth_losses(
        weights=weights, sample_disparity=sample_disp,
        rendered_disparity=rendered, pseudo_disparity=true, align=False,
    )
    np.testing.assert_allclose(raw["aligned_target"], true)
    assert float(raw["weighted_pointwise"]) == pytest.approx(0.25 * 0.4, abs=1e-6)
    assert float(raw["integrated"]) == pytest.approx(0.1, abs=1e-6)


def test_log_disparity_depth_losses_match_a_float64_reference():
    from vq3d_jax.losses import depth_losses

    rng = np.random.default_rng(3)
    true = rng.uniform(0.0, 0.4, (2, 6))
    true[0, 0] = 0.0  # a sky ray: below the floor, like any disparity under it
    sample_disp = rng.uniform(0.0, 0.4, (2, 6, 3))
    weights = rng.dirichlet(np.ones(3), (2, 6)) * 0.9
    rendered = np.sum(weights * sample_disp, axis=-1)
    floor = 1.0 / 48.0
    out = depth_losses(
        weights=jnp.asarray(weights, jnp.float32),
        sample_disparity=jnp.asarray(sample_disp, jnp.float32),
        rendered_disparity=jnp.asarray(rendered, jnp.float32),
        pseudo_disparity=jnp.asarray(true, jnp.float32), align=False, log_floor=floor,
    )

    def log_error(d, t):
        return np.abs(np.log(np.maximum(d, floor)) - np.log(np.maximum(t, floor)))

    pointwise = np.mean(np.sum(weights * log_error(sample_disp, true[..., None]), axis=-1))
    assert float(out["weighted_pointwise"]) == pytest.approx(pointwise, rel=1e-5)
    assert float(out["integrated"]) == pytest.approx(np.mean(log_error(rendered, true)), rel=1e-5)
    # A relative error: halving every disparity costs log 2 wherever both stay above the floor.
    half = depth_losses(
        weights=jnp.ones((1, 2, 1)), sample_disparity=jnp.asarray([[[0.1], [0.3]]]),
        rendered_disparity=jnp.asarray([[0.1, 0.3]]),
        pseudo_disparity=jnp.asarray([[0.2, 0.6]]), align=False, log_floor=floor,
    )
    assert float(half["integrated"]) == pytest.approx(np.log(2.0), rel=1e-5)


def test_view_consistency_of_a_view_warped_into_itself_is_zero():
    """GMNR's loss: warping a render into its own camera with its own depth is the
    identity (pixel centres land on pixel centres), so SSIM is 1 and the loss 0."""
    from vq3d_jax import geometry as geo
    from vq3d_jax.losses import ssim, view_consistency_loss

    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.uniform(size=(12, 12, 3)), jnp.float32)
    depth = jnp.asarray(rng.uniform(2.0, 4.0, (12, 12)), jnp.float32)
    k = geo.intrinsics_from_fov(40.0, 12, 12)
    c2w = geo.orbit(jnp.eye(4), jnp.asarray([0.0, 0.0, 3.0]), 0.2, -0.1)
    warped, visible = geo.backward_warp(image, k, c2w, depth, k, c2w)
    np.testing.assert_allclose(warped, image, atol=1e-4)
    assert bool(jnp.all(visible))
    assert float(view_consistency_loss(image[None], warped[None], visible[None])) < 1e-4
    np.testing.assert_allclose(ssim(image[None], image[None]), 1.0, atol=1e-6)
    shifted = jnp.roll(image, 1, axis=1)
    assert float(view_consistency_loss(image[None], shifted[None], visible[None])) > 0.05
