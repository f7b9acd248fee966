"""Losses and simple image metrics. Every function returns a float32 scalar.

The VQ loss lives with the quantizer (``vq3d_jax.nn.quantizer.vq_loss``).
"""

from __future__ import annotations

from collections.abc import Callable

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


def r1_penalty(disc_apply: Callable[[jax.Array], jax.Array], real_images: jax.Array) -> jax.Array:
    """R1 gradient penalty: mean over the batch of ‖∇ₓ D(x)‖² on real images.

    (Mescheder et al. 2018; StyleGAN2 §2 regulariser.) ``disc_apply`` maps
    images [B, ...] to logits [B]. The gradient is of Σ_b D(x_b), as in the
    official StyleGAN2 code, so a minibatch-stddev layer's cross-sample terms
    are included. The weight is *not* applied here: the caller adds
    (γ/2)·r1_penalty(...) to the discriminator loss (times the lazy
    regularisation interval if applied every k steps; StyleGAN2 §3.1).
    """

    def total_logit(x: jax.Array) -> jax.Array:
        return jnp.sum(disc_apply(x).astype(jnp.float32))

    grads = jax.grad(total_logit)(real_images).astype(jnp.float32)
    per_image = jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=1)
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
