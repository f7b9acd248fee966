"""Losses and simple image metrics. Every function returns a float32 scalar.

The VQ loss lives with the quantizer (``vq3d_jax.nn.quantizer.vq_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def l2_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over all elements (ViT-VQGAN's L2 reconstruction term)."""
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.square(diff))


def nonsaturating_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """−log σ(D(G(z))) = softplus(−l), averaged (Goodfellow et al. 2014 §3; StyleGAN2 uses it)."""
    return jnp.mean(jax.nn.softplus(-fake_logits.astype(jnp.float32)))


def nonsaturating_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """−log σ(D(x)) − log(1 − σ(D(G(z)))) = softplus(−real) + softplus(fake), each averaged."""
    real = jnp.mean(jax.nn.softplus(-real_logits.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.softplus(fake_logits.astype(jnp.float32)))
    return real + fake


def r1_penalty(disc_apply: Callable[[Any], jax.Array], real_images: Any) -> jax.Array:
    """R1 gradient penalty: mean over the batch of ‖∇ₓ D(x)‖² on real images.

    (Mescheder et al. 2018; StyleGAN2 §2 regulariser.) ``disc_apply`` maps
    images [B, ...] to logits [B]; the images may be a tuple of arrays with the same
    batch (EG3D's dual discriminator: image and raw image), whose squared gradients
    add up. The gradient is of Σ_b D(x_b), as in the
    official StyleGAN2 code, so a minibatch-stddev layer's cross-sample terms
    are included. The weight is *not* applied here: the caller adds
    (γ/2)·r1_penalty(...) to the discriminator loss (times the lazy
    regularisation interval if applied every k steps; StyleGAN2 §3.1).
    """

    def total_logit(x) -> jax.Array:
        return jnp.sum(disc_apply(x).astype(jnp.float32))

    grads = jax.grad(total_logit)(real_images)
    per_image = sum(jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1), axis=1)
                    for g in jax.tree.leaves(grads))
    return jnp.mean(per_image)


def psnr(pred: jax.Array, target: jax.Array, max_val: float = 2.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB of each image: shape [batch].

    PSNR = 10·log10(max_val² / MSE) per image (MSE over all non-batch axes).
    ``max_val`` is the dynamic range of the data: 2.0 for images in [−1, 1],
    1.0 for [0, 1].
    """
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    mse = jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=1)
    # Floor the MSE so identical images give a large finite value, not inf.
    mse = jnp.maximum(mse, 1e-20)
    return 10.0 * jnp.log10(max_val**2 / mse)


def masked_psnr(pred: jax.Array, target: jax.Array, mask: jax.Array,
                max_val: float = 2.0) -> jax.Array:
    """PSNR in dB of each image [B, H, W, C] over the pixels where `mask` [B, H, W] is
    true; an image with no such pixel gets NaN (the eval mean leaves it out)."""
    weight = mask.astype(jnp.float32)[..., None]
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    axes = tuple(range(1, diff.ndim))
    count = jnp.sum(weight, axis=axes) * diff.shape[-1]
    mse = jnp.maximum(jnp.sum(weight * jnp.square(diff), axis=axes), 1e-20 * count) / count
    return 10.0 * jnp.log10(max_val**2 / mse)


def align_scale_shift(
    source: jax.Array, target: jax.Array, mask: jax.Array | None = None, eps: float = 1e-8
) -> tuple[jax.Array, jax.Array]:
    """Per-example least squares (a, b) = argmin Σ m·(a·source + b − target)², stop-gradient.

    Monocular pseudo-GT depth is known only up to scale and shift (MiDaS/DPT), so
    VQ3D aligns it to the rendered disparity image by image before comparing
    (VQ3D §3.2). Leading axis = examples; the rest is flattened. The normal
    equations in centred form, a = Σ m·(x − x̄)(y − ȳ) / Σ m·(x − x̄)², b = ȳ − a·x̄:
    raw sums (n·Σx² − (Σx)²) cancel catastrophically in float32 when the source's
    offset is large against its spread. `eps` keeps a constant `source` finite
    (a → 0). Returns float32 [B] scale and shift.
    """
    batch = source.shape[0]
    x = jax.lax.stop_gradient(source).reshape(batch, -1).astype(jnp.float32)
    y = jax.lax.stop_gradient(target).reshape(batch, -1).astype(jnp.float32)
    m = jnp.ones_like(x) if mask is None else mask.reshape(batch, -1).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
    x_mean = jnp.sum(m * x, axis=1, keepdims=True) / n
    y_mean = jnp.sum(m * y, axis=1, keepdims=True) / n
    dx, dy = x - x_mean, y - y_mean
    scale = jnp.sum(m * dx * dy, axis=1) / (jnp.sum(m * dx * dx, axis=1) + eps)
    shift = y_mean[:, 0] - scale * x_mean[:, 0]
    return scale, shift


def disparity_target(
    pseudo_disparity: jax.Array,
    reference: jax.Array,
    mask: jax.Array | None = None,
    *,
    align: bool = True,
) -> jax.Array:
    """The pseudo-GT disparity [B, R] as a target for `reference` [B, R], stop-gradient:
    scale/shift-aligned to it per example (`align_scale_shift`, VQ3D §3.2), or as it is
    (`align=False`, metric depth)."""
    target = pseudo_disparity.astype(jnp.float32)
    if align:
        scale, shift = align_scale_shift(pseudo_disparity, reference, mask)
        target = scale[:, None] * target + shift[:, None]
    return jax.lax.stop_gradient(target)


def disparity_error(disparity: jax.Array, target: jax.Array,
                    log_floor: float | None = None) -> jax.Array:
    """Elementwise |d − d*|, or |log max(d, floor) − log max(d*, floor)| with `log_floor`."""
    d, t = disparity.astype(jnp.float32), target.astype(jnp.float32)
    if log_floor is None:
        return jnp.abs(d - t)
    return jnp.abs(jnp.log(jnp.maximum(d, log_floor)) - jnp.log(jnp.maximum(t, log_floor)))


def depth_losses(
    *,
    weights: jax.Array,
    sample_disparity: jax.Array,
    rendered_disparity: jax.Array,
    pseudo_disparity: jax.Array,
    mask: jax.Array | None = None,
    align: bool = True,
    log_floor: float | None = None,
) -> dict[str, jax.Array]:
    """VQ3D's depth supervision against scale/shift-aligned pseudo-GT disparity.

    Shapes: `weights`, `sample_disparity` [B, R, S] (per ray, per sample);
    `rendered_disparity`, `pseudo_disparity`, `mask` [B, R]. The pseudo-GT is
    aligned to the rendered disparity (`align_scale_shift`; `align=False` keeps it
    as it is, for metric depth), then with e(d, d*) = |d − d*|:
      weighted_pointwise = mean_rays Σᵢ wᵢ·e(disp(tᵢ), a·d̂ + b)  (supervises
        every sample's weight, not only the integral — VQ3D §3.2),
      integrated = mean_rays e(disp_rendered, a·d̂ + b).
    With `log_floor`, e = |log max(d, floor) − log max(d*, floor)| instead: a relative
    error (what AbsRel scores), so a nearby object's depth counts as much as the
    near ground's; disparities under the floor (the sky, the far horizon) are alike.
    Returns both float32 scalars and the aligned target (for pictures).
    """
    m = jnp.ones(pseudo_disparity.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    target = disparity_target(pseudo_disparity, rendered_disparity, m, align=align)
    count = jnp.maximum(jnp.sum(m), 1.0)
    per_sample = disparity_error(sample_disparity, target[..., None], log_floor)
    pointwise = jnp.sum(m * jnp.sum(weights.astype(jnp.float32) * per_sample, axis=-1)) / count
    integrated = jnp.sum(m * disparity_error(rendered_disparity, target, log_floor)) / count
    return {"weighted_pointwise": pointwise, "integrated": integrated, "aligned_target": target}


def median_scaled_abs_rel(
    pred_depth: jax.Array, true_depth: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """AbsRel = mean |min(s·d̂, d_max) − d| / d, median-scaled per image (Eigen et al. 2014 §4.2).

    s = median(d) / median(d̂) over the valid pixels (finite, positive true depth and
    positive predicted depth; the sky at +inf is left out), the standard treatment of
    scale-ambiguous depth (Zhou et al. 2017 §4.1). Scaled predictions are capped at the
    image's farthest true depth d_max, as Eigen et al. cap theirs at the dataset's range
    (80 m on KITTI): a ray that ends on the far field (depth ∞) where the ground runs out
    to the horizon costs a bounded error instead of an unbounded one. Inputs [B, H, W];
    returns AbsRel [B] (NaN for an image with no valid pixel) and s [B].
    """
    pred = pred_depth.astype(jnp.float32)
    true = true_depth.astype(jnp.float32)
    valid = jnp.isfinite(true) & (true > 0) & (pred > 0)
    axes = tuple(range(1, true.ndim))
    nan = jnp.float32(jnp.nan)
    scale = jnp.nanmedian(jnp.where(valid, true, nan), axis=axes) / jnp.nanmedian(
        jnp.where(valid, pred, nan), axis=axes
    )
    expand = scale.reshape((-1,) + (1,) * len(axes))
    safe_true = jnp.where(valid, true, 1.0)
    cap = jnp.max(jnp.where(valid, true, 0.0), axis=axes, keepdims=True)
    scaled = jnp.minimum(expand * jnp.where(valid, pred, 1.0), cap)
    error = jnp.where(valid, jnp.abs(scaled - safe_true), 0.0)
    count = jnp.sum(valid, axis=axes)
    abs_rel = jnp.sum(error / safe_true, axis=axes) / jnp.where(count > 0, count, nan)
    return abs_rel, scale


def ssim(x: jax.Array, y: jax.Array, c1: float = 0.01**2, c2: float = 0.03**2) -> jax.Array:
    """Per-pixel SSIM [B, H, W, C] of images in [0, 1] over 3×3 windows (Wang et al. 2004,
    eq. 13, the mean-filter form monodepth uses), borders reflected."""
    def pool(a):
        a = jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        h, w = a.shape[1] - 2, a.shape[2] - 2
        return sum(a[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0

    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    mx, my = pool(x), pool(y)
    vx, vy, cov = pool(x * x) - mx**2, pool(y * y) - my**2, pool(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def view_consistency_loss(rendered, warped, visible) -> jax.Array:
    """GMNR's view-consistency loss (arXiv 2304.01172): a second view warped into the
    first (`warped`, [B, H, W, C] in [0, 1]) against the first's render, over the `visible`
    [B, H, W] pixels: 0.5 · mean(0.85 · (1 − SSIM)/2 + 0.15 · |·|₁).

    [choice] The mean is per image, then over the batch: a batch mean, which gradient
    accumulation's micro-batches add up to (one pooled over all visible pixels of the
    batch would weigh micro-batches by their visible areas).
    """
    per_pixel = (0.85 * (1.0 - ssim(rendered, warped)) / 2.0
                 + 0.15 * jnp.abs(rendered.astype(jnp.float32) - warped))
    weight = visible.astype(jnp.float32)[..., None]
    count = jnp.maximum(jnp.sum(weight, axis=(1, 2, 3)) * per_pixel.shape[-1], 1.0)
    return 0.5 * jnp.mean(jnp.sum(per_pixel * weight, axis=(1, 2, 3)) / count)
