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
from paxtrain.nn.linear import Linear
from paxtrain.nn.rotary import apply_rope
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
        self.implementation = implementation
        q_key, k_key, v_key, o_key = split_rng_key(rng_key, 4)

        def projection(inputs: int, outputs: int, key: jax.Array) -> Linear:
            return Linear(inputs, outputs, with_bias=False, w_init=w_init, rng_key=key)

        self.query_proj = projection(model_dim, num_heads * head_dim, q_key)
        self.key_proj = projection(model_dim, num_kv_heads * head_dim, k_key)
        self.value_proj = projection(model_dim, num_kv_heads * head_dim, v_key)
        self.output_proj = projection(num_heads * head_dim, model_dim, o_key)

    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Attends within `x`; `positions` [time] or [batch, time] default to 0, 1, 2, ..."""
        batch, time = x.shape[:2]
        q = self.query_proj(x).reshape(batch, time, self.num_heads, self.head_dim)
        k = self.key_proj(x).reshape(batch, time, self.num_kv_heads, self.head_dim)
        v = self.value_proj(x).reshape(batch, time, self.num_kv_heads, self.head_dim)
        if self.rope_theta is not None:
            positions = jnp.arange(time) if positions is None else positions
            q, k = (
                apply_rope(q, positions, self.rope_theta),
                apply_rope(k, positions, self.rope_theta),
            )
        out = jax.nn.dot_product_attention(
            q,
            k,
            v,
            scale=1.0 / math.sqrt(self.head_dim),
            is_causal=self.causal,
            implementation=self.implementation,
        )
        return self.output_proj(out.reshape(batch, time, self.num_heads * self.head_dim))
