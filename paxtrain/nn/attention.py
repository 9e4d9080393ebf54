"""`MultiHeadAttention`: scaled dot-product attention with learned projections (no KV cache)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import paxtrain as pax
from paxtrain.nn.initializers import Initializer, split_rng_key
from paxtrain.nn.linear import Linear
from paxtrain.nn.sequential import Chainable


def causal_mask(query_length: int, key_length: int) -> jax.Array:
    """[query_length, key_length] booleans, True where query position t may see key s <= t.

    Example:
        >>> causal_mask(2, 2).tolist()
        [[True, False], [True, True]]
    """
    return jnp.asarray(np.tril(np.ones((query_length, key_length), dtype=bool)))


class MultiHeadAttention(Chainable, pax.Module):
    """Multi-head attention (Vaswani et al., 2017) over inputs [..., time, model_dim].

    Queries, keys and values are projected to `num_heads` heads of `key_size` (`value_size` for
    values), attention weights are `softmax(q . k / sqrt(key_size))` over key positions, and the
    concatenated heads are projected back to `model_dim`.

    `mask` (boolean, True = may attend) broadcasts against the logits [..., heads, query, key];
    `causal=True` additionally hides key positions after each query position.

    Example:
        >>> mha = nn.MultiHeadAttention(num_heads=2, key_size=4, model_dim=8, causal=True)
        >>> mha
        MultiHeadAttention(num_heads=2, key_size=4, value_size=4, model_dim=8, causal=True)
        >>> mha(jnp.ones((1, 5, 8))).shape
        (1, 5, 8)
    """

    def __init__(
        self,
        num_heads: int,
        key_size: int,
        model_dim: int,
        value_size: int | None = None,
        causal: bool = False,
        w_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        value_size = value_size or key_size
        self.num_heads, self.key_size, self.value_size = num_heads, key_size, value_size
        self.model_dim, self.causal = model_dim, causal
        q_key, k_key, v_key, o_key = split_rng_key(rng_key, 4)
        self.query_proj = Linear(model_dim, num_heads * key_size, w_init=w_init, rng_key=q_key)
        self.key_proj = Linear(model_dim, num_heads * key_size, w_init=w_init, rng_key=k_key)
        self.value_proj = Linear(model_dim, num_heads * value_size, w_init=w_init, rng_key=v_key)
        self.output_proj = Linear(num_heads * value_size, model_dim, w_init=w_init, rng_key=o_key)

    def __call__(
        self,
        query: jax.Array,
        key: jax.Array | None = None,
        value: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Attends from `query` to `key` / `value` (both default to `query`: self-attention)."""
        key = query if key is None else key
        value = key if value is None else value
        heads = self.num_heads
        q = self.query_proj(query).reshape(*query.shape[:-1], heads, self.key_size)
        k = self.key_proj(key).reshape(*key.shape[:-1], heads, self.key_size)
        v = self.value_proj(value).reshape(*value.shape[:-1], heads, self.value_size)
        # A Python float is weakly typed: the logits keep the compute dtype (bf16 stays bf16).
        logits = jnp.einsum("...thd,...shd->...hts", q, k) / math.sqrt(self.key_size)
        if self.causal:
            causal = causal_mask(query.shape[-2], key.shape[-2])
            mask = causal if mask is None else jnp.logical_and(mask, causal)
        if mask is not None:
            # The most negative finite value, not -inf: a fully masked row stays finite.
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("...hts,...shd->...thd", weights, v)
        return self.output_proj(out.reshape(*query.shape[:-1], heads * self.value_size))
