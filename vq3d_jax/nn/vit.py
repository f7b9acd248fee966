"""Vision-Transformer building blocks with logical axis names.

Pre-LN transformer (LN -> MHA -> residual; LN -> MLP -> residual) as used by
ViT-VQGAN (Yu et al., arXiv 2110.04627, §3.1) for both its encoder and decoder.

Every parameter carries logical axis names (``nn.with_logical_partitioning``)
and activations get ``nn.with_logical_constraint`` at block boundaries, so the
training code can shard them by rules; with no rules active both are no-ops.
Parameters are created in ``param_dtype`` (float32) and the maths runs in
``dtype`` (e.g. bfloat16).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vq3d_jax.nn.partitioning import partitioned

Dtype = Any

# Logical names of activations at block boundaries and inside the MLP/attention.
ACT_EMBED = ("activation_batch", "activation_length", "activation_embed")
ACT_MLP = ("activation_batch", "activation_length", "activation_mlp")
ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
# Decoding caches of keys/values: heads-major [batch, heads, length, head_dim].
ACT_CACHE = ("activation_batch", "activation_heads", "activation_length", "activation_kv")


def layer_norm(dtype: Dtype, param_dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm whose scale and bias are named ``'norm'``.

    Flax computes the statistics in float32 even for bfloat16 inputs.
    """
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(nn.initializers.ones, ("norm",)),
        bias_init=partitioned(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def sincos_2d_position_embedding(
    h: int, w: int, dim: int, temperature: float = 10_000.0
) -> jax.Array:
    """Fixed 2D sine-cosine position embedding, shape ``[h * w, dim]`` float32.

    ViT-VQGAN §3.1 uses fixed 2D sin-cos positions. A quarter of the channels
    encodes each of sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω) with frequencies
    ω_k = temperature^(-k / (dim/4)), k = 0..dim/4-1 (the 1D transformer
    encoding of Vaswani et al. applied to each axis). Rows are in row-major
    (y, x) order, matching a ``reshape(B, h * w, C)`` of an ``[B, h, w, C]`` grid.
    """
    if dim % 4:
        raise ValueError(f"sin-cos 2D embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    # Computed in numpy float64 so the table is a compile-time constant.
    omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    x_ang = xs.reshape(-1, 1) * omega[None]
    y_ang = ys.reshape(-1, 1) * omega[None]
    table = np.concatenate([np.sin(x_ang), np.cos(x_ang), np.sin(y_ang), np.cos(y_ang)], axis=1)
    return jnp.asarray(table, dtype=jnp.float32)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dense(width); the width is taken from the input."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    zero_init_output: bool = False  # fc2 starts at 0 (see `TransformerBlock`)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        out_init = nn.initializers.zeros if self.zero_init_output else (
            nn.initializers.xavier_uniform())
        x = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=partitioned(nn.initializers.normal(1e-6), ("mlp",)),
            name="fc1",
        )(x)
        x = nn.gelu(x)
        x = nn.with_logical_constraint(x, ACT_MLP)
        return nn.Dense(
            width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(out_init, ("mlp", "embed")),
            bias_init=partitioned(nn.initializers.normal(1e-6), ("embed",)),
            name="fc2",
        )(x)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention on ``[batch, length, width]``, bidirectional or causal.

    Separate q/k/v projections with kernels ``('embed', 'heads', 'kv')`` and an
    output projection ``('heads', 'kv', 'embed')``. The attention itself is
    ``jax.nn.dot_product_attention`` in the [batch, length, heads, head_dim]
    layout, which picks a fused (cuDNN flash) kernel on GPU and the XLA path
    elsewhere.

    Incremental decoding (``causal`` only): pass ``cache`` = ``{'key', 'value'}``,
    each [batch, heads, S, head_dim], and ``index``, the position of the first
    of x's T tokens. Their keys and values are written at ``index..index+T-1``
    and each attends to every cached position up to its own; the call returns
    ``(y, updated cache)``. S may be shorter than the whole sequence (the
    sampler grows it in segments, so early steps read a short cache).

    The projections are explicit params + einsum rather than ``nn.DenseGeneral``:
    DenseGeneral calls its kernel_init with a flattened 2D shape, which breaks
    the 3-name logical boxing as soon as a mesh is active.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # None/'xla': XLA's attention; 'cudnn': cuDNN's fused flash kernel (GPU, bf16/fp16).
    attention_impl: str | None = None
    causal: bool = False
    zero_init_output: bool = False  # the output projection starts at 0 (`TransformerBlock`)

    @nn.compact
    def __call__(self, x: jax.Array, cache: dict | None = None, index: jax.Array | None = None):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        x = x.astype(self.dtype)

        def param(name, init, names, shape):
            return jnp.asarray(self.param(name, partitioned(init, names), shape,
                                          self.param_dtype), self.dtype)

        # Glorot fans over the flattened (heads, kv) dims, as for a width×width Dense.
        in_init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        out_init = nn.initializers.zeros if self.zero_init_output else (
            nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2))

        def proj(name: str) -> jax.Array:
            w = param(f"{name}_kernel", in_init, ("embed", "heads", "kv"),
                      (width, self.num_heads, head_dim))
            b = param(f"{name}_bias", nn.initializers.zeros, ("heads", "kv"),
                      (self.num_heads, head_dim))
            y = jnp.einsum("btd,dhk->bthk", x, w) + b
            return nn.with_logical_constraint(y, ACT_HEADS)

        q, k, v = proj("query"), proj("key"), proj("value")
        # Softmax(QK^T / sqrt(d)) V; the 1/sqrt(d) scale is applied inside the call.
        if cache is None:
            y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal,
                                             implementation=self.attention_impl)
        else:
            if not self.causal:
                raise ValueError("A key/value cache only makes sense for causal attention.")
            y, cache = self._cached_attention(q, k, v, cache, index)
        y = nn.with_logical_constraint(y, ACT_HEADS)
        w = param("out_kernel", out_init, ("heads", "kv", "embed"),
                  (self.num_heads, head_dim, width))
        b = param("out_bias", nn.initializers.zeros, ("embed",), (width,))
        out = jnp.einsum("bthk,hkd->btd", y, w) + b
        return out if cache is None else (out, cache)

    def _cached_attention(self, q, k, v, cache: dict, index):
        """Writes k, v [B, T, H, K] at `index` into the heads-major cache, attends q to it.

        Heads-major [B, H, S, K] puts the batched-matmul dims first, so the step reads
        the cache as it lies (token-major needed a transpose of the whole cache per
        step). Written out, not `dot_product_attention`: the fused kernels take no
        one-token query with a mask.
        """
        cache = {
            name: nn.with_logical_constraint(
                jax.lax.dynamic_update_slice_in_dim(
                    cache[name], new.transpose(0, 2, 1, 3).astype(cache[name].dtype), index,
                    axis=2),
                ACT_CACHE)
            for name, new in (("key", k), ("value", v))
        }
        query_pos = index + jnp.arange(q.shape[1])
        visible = jnp.arange(cache["key"].shape[2])[None, :] <= query_pos[:, None]  # [T, S]
        logits = jnp.einsum("bthk,bhsk->bhts", q, cache["key"].astype(q.dtype),
                            preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
        logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
        y = jnp.einsum("bhts,bhsk->bthk", weights, cache["value"].astype(q.dtype))
        return y, cache


class TransformerBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)).

    With a ``cache`` (causal decoding, see `MultiHeadAttention`) returns
    ``(x, updated cache)``. ``zero_init_residual`` starts both branches' output
    projections at 0, so the block starts as the identity (SkipInit, De & Smith
    2020; DiT's adaLN-Zero, Peebles & Xie 2023 §3.2): an autoencoder's tokens
    then start as their own patch's features instead of a random mix of all of
    them, which is what made the tiny ViT-VQGAN learn so slowly
    (bench/results/README.md, stage-1 learning).
    """

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    causal: bool = False
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, cache: dict | None = None, index: jax.Array | None = None):
        x = nn.with_logical_constraint(x, ACT_EMBED)
        y = layer_norm(self.dtype, self.param_dtype, name="ln_attn")(x)
        y = MultiHeadAttention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                               attention_impl=self.attention_impl, causal=self.causal,
                               zero_init_output=self.zero_init_residual, name="attn")(
                                   y, cache, index)
        if cache is not None:
            y, cache = y
        x = x + y
        y = layer_norm(self.dtype, self.param_dtype, name="ln_mlp")(x)
        y = MlpBlock(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                     zero_init_output=self.zero_init_residual, name="mlp")(y)
        x = nn.with_logical_constraint(x + y, ACT_EMBED)
        return x if cache is None else (x, cache)


class Transformer(nn.Module):
    """A stack of ``depth`` pre-LN blocks followed by a final LayerNorm.

    ``remat=True`` rematerialises each block in the backward pass (activations
    of only the block inputs are kept), trading ~1/3 more compute for memory.
    """

    depth: int
    width: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    remat: bool = False
    zero_init_residual: bool = False  # every block starts as the identity (`TransformerBlock`)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.width:
            raise ValueError(f"Transformer width {self.width} but input has {x.shape[-1]}")
        block_cls = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        x = x.astype(self.dtype)
        for i in range(self.depth):
            x = block_cls(self.num_heads, self.mlp_dim, dtype=self.dtype,
                          param_dtype=self.param_dtype, attention_impl=self.attention_impl,
                          zero_init_residual=self.zero_init_residual, name=f"block_{i}")(x)
        return layer_norm(self.dtype, self.param_dtype, name="ln_final")(x)
