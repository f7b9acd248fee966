"""VQ3D stage 2 (arXiv 2302.06833 §3.4): a class-conditional autoregressive prior over codes.

A decoder-only pre-LN transformer (GPT-style; the ViT-VQGAN stage-2 sizes,
arXiv 2110.04627 §4) models p(c₁..c_L | y) = Πₜ p(cₜ | c<t, y) over the L
stage-1 code indices of an image in raster order. Position 0 holds the class
token y and position t the code c_{t−1}, so the logits at t predict cₜ. Class
index `num_classes` is the null class: training replaces y by it with
probability `class_dropout`, which makes the same network an unconditional
prior too (and enables classifier-free guidance, an extension beyond the paper).

`sample_codes` is the decode loop: one jitted `lax.fori_loop` per cache segment
with static shapes, a key/value cache per layer, temperature / top-k / top-p
(nn/token_sampling.py) and a per-example key, so sample i depends only on its own
key and label, not on the batch it is drawn in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vq3d_jax.nn import token_sampling
from vq3d_jax.nn.partitioning import partitioned
from vq3d_jax.nn.vit import ACT_EMBED, TransformerBlock, layer_norm

Dtype = Any

ACT_LOGITS = ("activation_batch", "activation_length", "activation_vocab")

# depth / width / heads; the MLP is 4× the width. base and large are the stage-2
# sizes quoted for ViT-VQGAN's VIM (24L/1024/16 heads, 36L/1536/24 heads). These
# dims make 321M and 1.05B parameters (vocab 8192, 1024 codes), not the ~650M and
# ~1.7B quoted beside them: we keep the stated dims.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 64, 2),
    "small": (12, 512, 8),
    "base": (24, 1024, 16),
    "large": (36, 1536, 24),
}


def preset_dims(name: str) -> dict[str, int]:
    if name not in PRESETS:
        raise ValueError(f"Unknown prior size {name!r}; choose one of {sorted(PRESETS)}.")
    depth, width, heads = PRESETS[name]
    return {"depth": depth, "width": width, "num_heads": heads, "mlp_dim": 4 * width}


class ARPrior(nn.Module):
    """Codes [B, L] int + labels [B] int → next-code logits [B, L, vocab] float32."""

    vocab_size: int
    num_classes: int  # the null class is index num_classes
    length: int
    depth: int
    width: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    attention_impl: str | None = None

    def setup(self):
        embed = partitioned(nn.initializers.normal(0.02), ("vocab", "embed"))
        self.token_embed = nn.Embed(self.vocab_size, self.width, dtype=self.dtype,
                                    param_dtype=self.param_dtype, embedding_init=embed)
        self.class_embed = nn.Embed(
            self.num_classes + 1, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=partitioned(nn.initializers.normal(0.02), ("classes", "embed")))
        self.position_embed = self.param(
            "position_embed", partitioned(nn.initializers.normal(0.02), ("length", "embed")),
            (self.length, self.width), self.param_dtype)
        # Remat is a training-time trade; the decode step keeps every block plain.
        block = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        self.blocks = [
            block(self.num_heads, self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                  attention_impl=self.attention_impl, causal=True)
            for _ in range(self.depth)
        ]
        self.ln_final = layer_norm(self.dtype, self.param_dtype)
        self.head = nn.Dense(
            self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.normal(0.02), ("embed", "vocab")),
            bias_init=partitioned(nn.initializers.zeros, ("vocab",)))

    def _logits(self, x: jax.Array) -> jax.Array:
        logits = self.head(self.ln_final(x)).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ACT_LOGITS)

    def __call__(self, codes: jax.Array, labels: jax.Array) -> jax.Array:
        """Teacher forcing: the logits at t see the class and c<t only (causal mask)."""
        if codes.shape[1] != self.length:
            raise ValueError(f"The prior models {self.length} codes, got {codes.shape[1]}.")
        x = jnp.concatenate(
            [self.class_embed(labels)[:, None], self.token_embed(codes[:, :-1])], axis=1)
        x = x + jnp.asarray(self.position_embed, self.dtype)[None]
        x = nn.with_logical_constraint(x, ACT_EMBED)
        for block in self.blocks:
            x = block(x)
        return self._logits(x)

    def decode_step(self, previous: jax.Array, labels: jax.Array, index: jax.Array,
                    cache: list[dict]) -> tuple[jax.Array, list[dict]]:
        """Position `index` for the whole batch → (logits [B, vocab], updated cache).

        `previous` [B] is c_{index−1} (ignored at index 0, where the class token sits).
        """
        token = jnp.where(index == 0, self.class_embed(labels), self.token_embed(previous))
        position = jax.lax.dynamic_slice_in_dim(
            jnp.asarray(self.position_embed, self.dtype), index, 1)
        x = (token[:, None] + position[None]).astype(self.dtype)
        updated = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, layer_cache, index)
            updated.append(layer_cache)
        return self._logits(x)[:, 0], updated


def build(dims: dict, *, vocab_size: int, num_classes: int, length: int, dtype: Dtype,
          remat: bool = False, attention_impl: str | None = None) -> ARPrior:
    return ARPrior(vocab_size=vocab_size, num_classes=num_classes, length=length,
                   dtype=dtype, remat=remat, attention_impl=attention_impl, **dims)


def init_cache(model: ARPrior, batch: int, length: int) -> list[dict]:
    """Zero keys/values for `length` positions, one {'key', 'value'} per layer."""
    head_dim = model.width // model.num_heads
    shape = (batch, model.num_heads, length, head_dim)  # heads-major: see nn/vit.py
    return [{"key": jnp.zeros(shape, model.dtype), "value": jnp.zeros(shape, model.dtype)}
            for _ in range(model.depth)]


def grow_cache(cache: list[dict], length: int) -> list[dict]:
    """Zero-pads every layer's keys/values to `length` positions."""
    def pad(x):
        return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))

    return jax.tree.map(pad, cache)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How `sample_codes` draws: see nn/token_sampling.py; `guidance_scale` 1 = plain conditional.

    `guidance_scale` w ≠ 1 is classifier-free guidance (Ho & Salimans 2022, eq. 6 in
    logit form: ℓ = ℓ_null + w·(ℓ_y − ℓ_null)), beyond the VQ3D paper.
    `cache_segments` splits the sequence into that many equal spans; steps in
    span s attend to a cache that ends with it, so early steps read less memory.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = 1.0
    cache_segments: int = 1


def segment_ends(length: int, segments: int) -> list[int]:
    """Cache lengths of the decode loop's spans: ceil-spaced, the last one = length."""
    segments = max(1, min(int(segments), length))
    return sorted({-(-length * (s + 1) // segments) for s in range(segments)})


def sample_codes(model: ARPrior, params, labels: jax.Array, keys: jax.Array,
                 options: SamplingOptions = SamplingOptions()) -> jax.Array:
    """Draws code sequences [B, L] int32 for labels [B] with per-example keys [B].

    Token t of example i uses fold_in(keys[i], t). Params are cast to the model's
    compute dtype once, so each step reads them at that width.
    """
    batch, length = labels.shape[0], model.length
    guided = options.guidance_scale != 1.0
    params = jax.tree.map(lambda p: p.astype(model.dtype) if jnp.issubdtype(
        p.dtype, jnp.floating) else p, params)
    if guided:  # rows [conditional; null], fed the same tokens
        labels = jnp.concatenate([labels, jnp.full_like(labels, model.num_classes)])

    def draw(logits, t):
        if guided:
            cond, null = logits[:batch], logits[batch:]
            logits = null + options.guidance_scale * (cond - null)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
        return jax.vmap(lambda k, row: token_sampling.sample_tokens(
            k, row, temperature=options.temperature, top_k=options.top_k,
            top_p=options.top_p))(step_keys, logits)

    def step(t, carry):
        codes, cache = carry
        rows = jnp.tile(codes, (2, 1)) if guided else codes
        previous = jax.lax.dynamic_index_in_dim(rows, jnp.maximum(t - 1, 0), 1, False)
        logits, cache = model.apply({"params": params}, previous, labels, t, cache,
                                    method=ARPrior.decode_step)
        codes = jax.lax.dynamic_update_index_in_dim(codes, draw(logits, t), t, axis=1)
        return codes, cache

    ends = segment_ends(length, options.cache_segments)
    codes = jnp.zeros((batch, length), jnp.int32)
    cache = init_cache(model, labels.shape[0], ends[0])
    start = 0
    for end in ends:
        cache = grow_cache(cache, end)
        codes, cache = jax.lax.fori_loop(start, end, step, (codes, cache))
        start = end
    return codes


def analytic_flops_per_sequence(dims: dict, length: int, vocab_size: int) -> int:
    """Forward matmul FLOPs for one sequence of `length` tokens (PaLM-style count).

    Per token per layer 2·(4·D² + 2·D·M) for the projections and MLP and 2·L·D
    for QKᵀ and AV under a causal mask (half of the full 4·L·D), plus 2·D·V for
    the head. ×3 for forward + backward.
    """
    d, m = dims["width"], dims["mlp_dim"]
    per_token = dims["depth"] * (2 * (4 * d * d + 2 * d * m) + 2 * length * d)
    return length * (per_token + 2 * d * vocab_size)
