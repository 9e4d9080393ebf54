"""`GroupedQueryAttention`: causal self-attention with fewer key/value heads than query heads,
and rotary positions (Ainslie et al. 2023; Llama 2/3).

Each of `num_kv_heads` key/value heads serves `num_heads // num_kv_heads` query heads, which
shrinks the K/V projections (and a decoding cache) by that factor. `jax.nn.dot_product_attention`
takes the grouped heads as they are, so no K/V head is copied. With `num_kv_heads == num_heads`
and no rotary positions it is `nn.MultiHeadAttention` with the same weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.nn.attention import IMPLEMENTATION_MSG, IMPLEMENTATIONS
from paxtrain.nn.initializers import Initializer, split_rng_key
from paxtrain.nn.kv_cache import KVCache
from paxtrain.nn.linear import Linear
from paxtrain.nn.rotary import Llama3RopeScaling, apply_rope
from paxtrain.nn.sequential import Chainable

GROUPS_MSG = (
    "num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads}): each key/value "
    "head serves the same number of query heads. Change `num_heads` or `num_kv_heads`."
)


class GroupedQueryAttention(Chainable, pax.Module):
    """Self-attention over x [batch, time, model_dim] with `num_kv_heads` key/value heads.

    The projections have no bias (Llama's); `query_proj`, `key_proj`, `value_proj`,
    `output_proj` are the names the tensor-parallel rules of `paxtrain.parallel` split.

    Args:
      model_dim: input and output width.
      num_heads: query heads.
      num_kv_heads: key/value heads; divides `num_heads` (1: multi-query attention).
      head_dim: size of each head; defaults to `model_dim // num_heads`.
      rope_theta: base of the rotary angles; None: no rotary positions.
      rope_scaling: a rule rescaling the rotary frequencies (`nn.rope_scaling`), or None.
      causal: hide later positions from each query.
      w_init: initializer of the four projections (default: `Linear`'s).
      implementation: `jax.nn.dot_product_attention`'s ("xla", "cudnn" or None).

    Example:
        >>> attention = nn.GroupedQueryAttention(16, num_heads=4, num_kv_heads=2)
        >>> attention.key_proj.weight.shape  # two K heads of size 4
        (16, 8)
        >>> attention(jnp.ones((2, 5, 16))).shape
        (2, 5, 16)
    """

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int | None = None,
        *,
        rope_theta: float | None = 10000.0,
        rope_scaling: Llama3RopeScaling | None = None,
        causal: bool = True,
        w_init: Initializer | None = None,
        implementation: str | None = None,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if num_heads % num_kv_heads:
            raise ValueError(GROUPS_MSG.format(num_heads=num_heads, num_kv_heads=num_kv_heads))
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(IMPLEMENTATION_MSG.format(got=implementation))
        head_dim = head_dim or model_dim // num_heads
        self.model_dim, self.num_heads, self.num_kv_heads = model_dim, num_heads, num_kv_heads
        self.head_dim, self.rope_theta, self.causal = head_dim, rope_theta, causal
        self.rope_scaling = rope_scaling
        self.implementation = implementation
        q_key, k_key, v_key, o_key = split_rng_key(rng_key, 4)

        def projection(inputs: int, outputs: int, key: jax.Array) -> Linear:
            return Linear(inputs, outputs, with_bias=False, w_init=w_init, rng_key=key)

        self.query_proj = projection(model_dim, num_heads * head_dim, q_key)
        self.key_proj = projection(model_dim, num_kv_heads * head_dim, k_key)
        self.value_proj = projection(model_dim, num_kv_heads * head_dim, v_key)
        self.output_proj = projection(num_heads * head_dim, model_dim, o_key)

    # `with_cache`: decoding, one call after another. A class attribute, not an instance one: a
    # layer without a cache shows none in its repr.
    cache: KVCache | None = None

    def with_cache(self, batch_size: int, max_len: int) -> GroupedQueryAttention:
        """A copy that keeps the keys and values of what it has seen (a `KVCache` of `max_len`
        positions): each call then continues the sequence of the calls before it. Call it
        through `pax.purecall`, which returns the copy with its cache extended.

        Example:
            >>> attention = nn.GroupedQueryAttention(8, num_heads=2, num_kv_heads=1)
            >>> decoder = attention.with_cache(batch_size=1, max_len=4)
            >>> decoder, y = pax.purecall(decoder, jnp.ones((1, 3, 8)))  # the prompt
            >>> decoder, y = pax.purecall(decoder, jnp.ones((1, 1, 8)))  # one more position
            >>> int(decoder.cache.length)
            4
        """
        cache = KVCache(batch_size, max_len, self.num_kv_heads, self.head_dim)
        return self.replace(cache=cache)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Attends within `x` [batch, time, model_dim], and with a cache also to the positions
        of the calls before."""
        batch, time = x.shape[:2]
        q = self.query_proj(x).reshape(batch, time, self.num_heads, self.head_dim)
        k = self.key_proj(x).reshape(batch, time, self.num_kv_heads, self.head_dim)
        v = self.value_proj(x).reshape(batch, time, self.num_kv_heads, self.head_dim)
        start = 0 if self.cache is None else self.cache.length
        if self.rope_theta is not None:
            positions = start + jnp.arange(time)
            q = apply_rope(q, positions, self.rope_theta, self.rope_scaling)
            k = apply_rope(k, positions, self.rope_theta, self.rope_scaling)
        mask = None
        if self.cache is not None:
            k, v, _ = self.cache.extend(k, v)
            mask = self.cache.visible(start, time, self.causal)
        out = jax.nn.dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            scale=1.0 / math.sqrt(self.head_dim),
            is_causal=self.causal and self.cache is None,
            implementation=self.implementation,
        )
        return self.output_proj(out.reshape(batch, time, self.num_heads * self.head_dim))
