"""Next-token sampling for autoregressive priors: temperature, top-k and top-p (nucleus).

Filters set the logits of excluded tokens to −inf, so they compose (top-k, then
top-p on what is left) and feed `jax.random.categorical` directly. Static shapes
throughout: they run inside a jitted `lax.scan` decode loop.

- top-k (Fan et al. 2018, arXiv 1805.04833 §5.4): keep the k largest logits.
- top-p (Holtzman et al. 2019, arXiv 1904.09751 §3.1): keep the smallest set of
  tokens whose probability mass reaches p, taken in order of probability.

Ties at the cut-off are kept together (a filter never separates equal logits),
so a tie can leave more than k tokens or more mass than the minimal set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Logits [..., V] with all but the k largest per row set to −inf (k ≤ 0: unchanged)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth_largest = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth_largest, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Logits [..., V] outside the smallest top-probability set with mass ≥ p set to −inf.

    p ≥ 1: unchanged. The most likely token is always kept.
    """
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
    # A token is in the nucleus while the mass before it is still short of p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def sample_tokens(
    rng: jax.Array,
    logits: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """Draws one token per row of logits [..., V] → int32 [...].

    temperature 0 is greedy (argmax); otherwise logits / temperature, then top-k,
    then top-p, then a categorical draw.
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / temperature
    filtered = top_p_filter(top_k_filter(scaled, top_k), top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
