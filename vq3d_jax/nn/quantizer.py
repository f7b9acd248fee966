"""Factorised, ℓ2-normalised vector quantizer (ViT-VQGAN, arXiv 2110.04627, §3.2).

Token features are projected to a low-dimensional code space (e.g. 32),
ℓ2-normalised, and matched to an ℓ2-normalised codebook by cosine similarity;
the chosen code goes back to the model width through a second linear layer.
The nearest code is taken as ``argmax`` of the dot product of unit vectors,
which equals ``argmin`` of the Euclidean distance between them
(‖a − b‖² = 2 − 2⟨a, b⟩ for unit a, b).

Distances, the loss and the code statistics are computed in float32 whatever
the compute dtype of the projections.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.nn.partitioning import partitioned

Dtype = Any


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / ‖x‖ along ``axis``; ``eps`` bounds ‖x‖² away from 0 so gradients stay finite."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def straight_through(z: jax.Array, z_q: jax.Array) -> jax.Array:
    """Straight-through estimator ``z + sg(z_q − z)`` (ViT-VQGAN §3.2, after VQ-VAE).

    Forward value is ``z_q``; the gradient passes to ``z`` unchanged (identity)
    and nothing reaches ``z_q`` along this path.
    """
    return z + jax.lax.stop_gradient(z_q - z)


def vq_loss(z: jax.Array, z_q: jax.Array, beta: float) -> jax.Array:
    """β·mean((sg(z_q) − z)²) + mean((z_q − sg(z))²), float32 scalar.

    The commitment term (weight β) pulls the encoder output towards its code;
    the codebook term pulls the code towards the encoder output (ViT-VQGAN
    §3.2, VQ-VAE eq. 3). Means are over *all elements* (tokens × code dims),
    as in common PyTorch reimplementations; so ∂/∂z = 2β(z − z_q)/N with N the
    element count. In ViT-VQGAN both ``z`` and ``z_q`` are the unit vectors.
    """
    z = z.astype(jnp.float32)
    z_q = z_q.astype(jnp.float32)
    commit = jnp.mean(jnp.square(jax.lax.stop_gradient(z_q) - z))
    codebook = jnp.mean(jnp.square(z_q - jax.lax.stop_gradient(z)))
    return beta * commit + codebook


def nearest_codes(z_n: jax.Array, codebook_n: jax.Array) -> jax.Array:
    """Index of the most cosine-similar code for each unit vector in ``z_n``.

    ``z_n``: [..., D] unit vectors; ``codebook_n``: [K, D] unit vectors.
    Returns int32 [...]. The [..., K] similarity matrix is float32.
    """
    sims = jnp.einsum("...d,kd->...k", z_n.astype(jnp.float32),
                      codebook_n.astype(jnp.float32))
    return jnp.argmax(sims, axis=-1).astype(jnp.int32)


def code_statistics(codes: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
    """(perplexity, usage) of the batch code histogram, float32.

    perplexity = exp(−Σ_k p_k log p_k) with p the empirical code frequencies
    (0 log 0 = 0); usage = fraction of the K codes used at least once.
    A histogram by ``bincount`` avoids a [tokens, K] one-hot.
    """
    counts = code_counts(codes, codebook_size)
    probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                                 0.0))
    usage = jnp.mean((counts > 0).astype(jnp.float32))
    return jnp.exp(entropy), usage


def code_counts(codes: jax.Array, codebook_size: int) -> jax.Array:
    """How many tokens chose each code, float32 [K]."""
    return jnp.bincount(codes.reshape(-1), length=codebook_size).astype(jnp.float32)


def restart_dead_codes(
    codebook: jax.Array,
    usage: jax.Array,
    counts: jax.Array,
    latents: jax.Array,
    rng: jax.Array,
    *,
    decay: float,
    threshold: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random restarts of unused codes (Jukebox, Dhariwal et al. 2020, §2.3).

    ``usage`` is an EMA of per-code token counts; a code whose EMA falls under
    ``threshold`` is moved onto a randomly chosen current encoder latent, so it
    is near data again and can win tokens. Returns (codebook, usage, restarted).
    Without this, codes that no latent picks never get a gradient and the
    codebook collapses to a handful of entries.
    """
    usage = decay * usage + (1.0 - decay) * counts
    dead = usage < threshold
    flat = latents.reshape(-1, latents.shape[-1]).astype(codebook.dtype)
    picks = jax.random.randint(rng, (codebook.shape[0],), 0, flat.shape[0])
    codebook = jnp.where(dead[:, None], flat[picks], codebook)
    # A restarted code starts as if used at the threshold's level, not as dead again.
    usage = jnp.where(dead, jnp.maximum(usage, 2.0 * threshold), usage)
    return codebook, usage, jnp.sum(dead.astype(jnp.float32))


class FactorizedQuantizer(nn.Module):
    """Linear(in→code_dim) → ℓ2 → nearest code → straight-through → Linear(code_dim→width).

    Attributes:
      codebook_size: number of codes K (ViT-VQGAN: 8192).
      code_dim: code-space dimension (ViT-VQGAN: 32).
      width: width of the features returned (the decoder's width); the input
        width is inferred from the input.
      beta: commitment weight β (0.25).
      rescale_codes: multiply the unit code vector by √code_dim before the output
        projection, so the decoder's input has unit-rms elements like its sin-cos
        positions (rms 1/√2). A unit vector's elements have rms 1/√code_dim, and
        through a Glorot-initialised projection they arrived ~5× smaller than the
        positions they are added to: the decoder first learned a position-only mean
        image (bench/results/README.md, stage-1 learning).

    ``__call__(x)`` returns ``(quantized, aux)`` with ``aux`` =
    ``{codes: int32 [...], latents: the unit code-space vectors [..., code_dim],
    vq_loss, perplexity, codebook_usage}`` (float32 scalars). ``lookup(codes)``
    maps codes straight to the same output features.
    """

    codebook_size: int
    code_dim: int
    width: int
    beta: float = 0.25
    rescale_codes: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.in_proj = nn.Dense(
            self.code_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.xavier_uniform(), ("embed", "code")),
            bias_init=partitioned(nn.initializers.zeros, ("code",)),
        )
        # Any isotropic init works: only the directions of the rows matter.
        self.codebook = self.param(
            "codebook",
            partitioned(nn.initializers.normal(1.0), ("codebook", "code")),
            (self.codebook_size, self.code_dim),
            self.param_dtype,
        )
        self.out_proj = nn.Dense(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.xavier_uniform(), ("code", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )

    def normalized_codebook(self) -> jax.Array:
        """The ℓ2-normalised codebook, float32 [K, code_dim]."""
        return l2_normalize(jnp.asarray(self.codebook, jnp.float32))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        z = l2_normalize(self.in_proj(x).astype(jnp.float32))
        codebook_n = self.normalized_codebook()
        codes = nearest_codes(z, codebook_n)
        z_q = jnp.take(codebook_n, codes, axis=0)
        loss = vq_loss(z, z_q, self.beta)
        perplexity, usage = code_statistics(codes, self.codebook_size)
        quantized = self._project_out(straight_through(z, z_q))
        aux = {
            "codes": codes,
            "latents": z,
            "vq_loss": loss,
            "perplexity": perplexity,
            "codebook_usage": usage,
        }
        return quantized, aux

    def lookup(self, codes: jax.Array) -> jax.Array:
        """Integer codes [...] → output features [..., width] (no gradient path to z)."""
        return self._project_out(jnp.take(self.normalized_codebook(), codes, axis=0))

    def _project_out(self, unit_codes: jax.Array) -> jax.Array:
        scale = jnp.sqrt(float(self.code_dim)) if self.rescale_codes else 1.0
        return self.out_proj((unit_codes * scale).astype(self.dtype))
