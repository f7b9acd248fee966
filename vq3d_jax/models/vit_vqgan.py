"""ViT-VQGAN autoencoder (Yu et al., arXiv 2110.04627): encoder, 2D decoder, quantizer.

Geometry (§3.1): an image is cut into p×p patches (p = 8 at 256² → 32×32 =
1024 tokens) by a stride-p convolution, given fixed 2D sin-cos positions and
run through a ViT; the factorised quantizer (§3.2) maps each token to a code;
the decoder ViT maps code features back to p×p×C pixel patches.

Encoder, quantizer and decoder are separate submodules so that VQ3D can swap
the 2D decoder for a tri-plane decoder consuming the same quantized tokens
(models/vq3d.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.nn.partitioning import partitioned
from vq3d_jax.nn.quantizer import FactorizedQuantizer
from vq3d_jax.nn.vit import ACT_EMBED, Transformer, sincos_2d_position_embedding

Dtype = Any

# layers / width / heads / MLP width. 'mu' is a CPU-test size and 'mu128' the same
# depth twice as wide (the tiny presets: on 8-scene memorisation it learned ~3 dB
# faster than 'mu' at no visible cost beside the renderer); 'S' and 'B' are ViT-VQGAN
# Small and Base; 'L' is ViT-VQGAN's Large decoder (paired with an 'S' encoder); 'Ti'
# follows the usual ViT-Tiny.
_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "mu": (2, 64, 2, 128),
    "mu128": (2, 128, 2, 256),
    "Ti": (12, 192, 3, 768),
    "S": (8, 512, 8, 2048),
    "B": (12, 768, 12, 3072),
    "L": (32, 1280, 16, 5120),
}


def decode_variant(name: str) -> dict[str, int]:
    """Model size from a variant name: ``dict(width, depth, heads, mlp_dim)``."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown ViT variant {name!r}; valid: {sorted(_VARIANTS)}")
    depth, width, heads, mlp_dim = _VARIANTS[name]
    return {"width": width, "depth": depth, "heads": heads, "mlp_dim": mlp_dim}


def patchify(images: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] → [B, (H/p)(W/p), p·p·C], patches in row-major order."""
    b, h, w, c = images.shape
    if h % p or w % p:
        raise ValueError(f"image {h}×{w} not divisible by patch size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, p: int, h: int, w: int, c: int) -> jax.Array:
    """Inverse of :func:`patchify` (depth-to-space): [B, T, p·p·C] → [B, H, W, C]."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class ViTStack(nn.Module):
    """The settings every ViT encoder and decoder head of the autoencoders shares:
    its size (`variant`, `decode_variant`), dtypes and the `Transformer` options."""

    variant: str = "S"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    attention_impl: str | None = None
    zero_init_residual: bool = False


class Encoder(ViTStack):
    """Images in [−1, 1] [B, H, W, C] → tokens [B, (H/p)(W/p), width].

    The patch embedding is a Dense on flattened p×p×C patches, which is exactly
    ViT-VQGAN's stride-p, kernel-p convolution; its kernel is ('patch', 'embed').
    """

    patch_size: int = 8

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = decode_variant(self.variant)
        p = self.patch_size
        _, h, w, _ = images.shape
        x = patchify(images.astype(self.dtype), p)
        x = nn.Dense(
            cfg["width"],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.lecun_normal(), ("patch", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="patch_embed",
        )(x)
        return vit_trunk(self, x, h // p, w // p)


def vit_trunk(stack: ViTStack, x: jax.Array, rows: int, cols: int) -> jax.Array:
    """Tokens [B, rows·cols, width] + sin-cos positions → the stack's ViT, named
    "transformer"; called inside a `ViTStack`'s compact ``__call__`` (the encoder, and
    every head that decodes the quantized token grid: 2D pixels here, tri-planes in VQ3D).
    """
    cfg = decode_variant(stack.variant)
    x = x + sincos_2d_position_embedding(rows, cols, cfg["width"]).astype(stack.dtype)
    x = nn.with_logical_constraint(x, ACT_EMBED)
    return Transformer(
        depth=cfg["depth"], width=cfg["width"], num_heads=cfg["heads"],
        mlp_dim=cfg["mlp_dim"], dtype=stack.dtype, param_dtype=stack.param_dtype,
        remat=stack.remat, attention_impl=stack.attention_impl,
        zero_init_residual=stack.zero_init_residual, name="transformer",
    )(x)


def token_head(decoder: nn.Module, x: jax.Array, features: int, name: str) -> jax.Array:
    """Per-token linear map to a patch's worth of outputs, kernel ('embed', 'patch')."""
    return nn.Dense(
        features,
        dtype=decoder.dtype,
        param_dtype=decoder.param_dtype,
        kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "patch")),
        bias_init=partitioned(nn.initializers.zeros, ("patch",)),
        name=name,
    )(x)


class Decoder2D(ViTStack):
    """Tokens [B, T, width] → images [B, H, W, C] float32 (unbounded).

    + sin-cos positions → ViT → per-token Dense to p·p·C (kernel
    ('embed', 'patch')) → depth-to-space. The tokens must already have the
    decoder width (the quantizer's output projection produces it).
    """

    patch_size: int = 8
    image_size: int = 256
    out_channels: int = 3

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        p, s = self.patch_size, self.image_size
        grid = s // p
        if tokens.shape[1] != grid * grid:
            raise ValueError(f"expected {grid * grid} tokens for {s}² / patch {p}, "
                             f"got {tokens.shape[1]}")
        x = vit_trunk(self, tokens.astype(self.dtype), grid, grid)
        x = token_head(self, x, p * p * self.out_channels, "to_pixels")
        return unpatchify(x.astype(jnp.float32), p, s, s, self.out_channels)


class VitVQGAN(nn.Module):
    """Stage-1 autoencoder: ``Encoder`` → ``FactorizedQuantizer`` → decoder head.

    Here the head is ``Decoder2D`` (ViT-VQGAN's images); a subclass swaps it by
    overriding ``setup_decoder`` and ``decode`` (VQ3D's tri-planes: models/vq3d.py).
    ``__call__(images) -> (decoded, aux)``; ``encode(images) -> (quantized, aux)``;
    ``decode(quantized)``; ``decode_codes(codes)``. ``aux`` is the quantizer's dict (codes,
    latents, vq_loss, perplexity, codebook_usage). Params: ``{'encoder', 'quantizer',
    'decoder'}``.
    """

    encoder_variant: str = "S"
    decoder_variant: str = "S"
    patch_size: int = 8
    image_size: int = 256
    codebook_size: int = 8192
    code_dim: int = 32
    beta: float = 0.25
    in_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    attention_impl: str | None = None
    zero_init_residual: bool = False
    rescale_codes: bool = True

    def setup(self):
        self.encoder = Encoder(variant=self.encoder_variant, patch_size=self.patch_size,
                               **self.vit_options())
        self.quantizer = FactorizedQuantizer(
            codebook_size=self.codebook_size, code_dim=self.code_dim,
            width=decode_variant(self.decoder_variant)["width"], beta=self.beta,
            rescale_codes=self.rescale_codes, dtype=self.dtype, param_dtype=self.param_dtype,
        )
        self.setup_decoder()

    def vit_options(self) -> dict:
        """The ViT settings every encoder and decoder of this model shares."""
        return {"dtype": self.dtype, "param_dtype": self.param_dtype, "remat": self.remat,
                "attention_impl": self.attention_impl,
                "zero_init_residual": self.zero_init_residual}

    def setup_decoder(self):
        """Called by ``setup``: the decoder head's submodules."""
        self.decoder = Decoder2D(variant=self.decoder_variant, patch_size=self.patch_size,
                                 image_size=self.image_size, out_channels=self.in_channels,
                                 **self.vit_options())

    def encode(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.quantizer(self.encoder(images))

    def decode(self, quantized: jax.Array) -> jax.Array:
        return self.decoder(quantized)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        return self.decode(self.quantizer.lookup(codes))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        quantized, aux = self.encode(images)
        return self.decode(quantized), aux


def _transformer_flops_per_token(cfg: dict[str, int], tokens: int) -> int:
    d, m = cfg["width"], cfg["mlp_dim"]
    # q, k, v, out projections (4·D²) + MLP (2·D·M) multiply-adds, ×2 FLOPs each;
    # attention: QKᵀ and AV are each 2·L·D FLOPs per query token.
    return cfg["depth"] * (2 * (4 * d * d + 2 * d * m) + 4 * tokens * d)


def analytic_flops_per_image(
    encoder_variant: str,
    decoder_variant: str,
    patch_size: int,
    image_size: int,
    codebook_size: int,
    code_dim: int,
    channels: int = 3,
) -> int:
    """Matmul FLOPs of one forward pass of the VitVQGAN for one image.

    With L = (image_size/p)² tokens, D_e/D_d the encoder/decoder widths, M the
    MLP widths, n the depths, K the codebook size, d the code dim, C channels:

        FLOPs = L · [ 2·p²C·D_e                                (patch embedding)
                    + n_e·(2·(4·D_e² + 2·D_e·M_e) + 4·L·D_e)   (encoder ViT)
                    + 2·D_e·d + 2·d·K + 2·d·D_d                (quantizer: in-proj,
                                                                 cosine sims, out-proj)
                    + n_d·(2·(4·D_d² + 2·D_d·M_d) + 4·L·D_d)   (decoder ViT)
                    + 2·D_d·p²C ]                              (to pixels)

    i.e. 2 FLOPs per multiply-add of every matmul (weights used once per
    token), plus 4·L·D per layer per token for the two attention matmuls.
    Biases, LayerNorms, softmax and activations are left out. Multiply by ~3
    for forward + backward (by ~4 with remat).
    """
    enc, dec = decode_variant(encoder_variant), decode_variant(decoder_variant)
    tokens = (image_size // patch_size) ** 2
    patch = patch_size * patch_size * channels
    per_token = (
        2 * patch * enc["width"]
        + _transformer_flops_per_token(enc, tokens)
        + 2 * enc["width"] * code_dim + 2 * code_dim * codebook_size + 2 * code_dim * dec["width"]
        + _transformer_flops_per_token(dec, tokens)
        + 2 * dec["width"] * patch
    )
    return tokens * per_token
