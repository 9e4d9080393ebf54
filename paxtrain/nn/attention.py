"""`MultiHeadAttention`: scaled dot-product attention with learned projections, and a KV cache
for decoding (`with_cache`).

The attention itself is `jax.nn.dot_product_attention`, so the fused kernels JAX offers (cuDNN
flash attention with `implementation="cudnn"`) are one argument away; the default lets JAX pick.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import paxtrain as pax
from paxtrain.nn.initializers import Initializer, split_rng_key
from paxtrain.nn.kv_cache import KVCache
from paxtrain.nn.linear import Linear
from paxtrain.nn.sequential import Chainable

IMPLEMENTATIONS = (None, "xla", "cudnn")
IMPLEMENTATION_MSG = "implementation={got!r}: choose None (JAX picks), 'xla' or 'cudnn'."
CUDNN_MSG = (
    "implementation='cudnn' (cuDNN flash attention) needs an NVIDIA GPU, and JAX runs on "
    "{backend} here: use 'xla' (or None), e.g. `model.attention=xla`."
)
BOTH_INITS_MSG = """\
MultiHeadAttention: pass w_init_scale (PAX's variance-scaling factor) or w_init (an \
initializer), not both."""
CACHE_SELF_ONLY_MSG = """\
MultiHeadAttention with a KV cache attends from the new positions to the ones seen so far \
(self-attention): call it with the query only, no key, value or mask."""


def causal_mask(query_length: int, key_length: int) -> jax.Array:
    """[query_length, key_length] booleans, True where query position t may see key s <= t.

    Example:
        >>> causal_mask(2, 2).tolist()
        [[True, False], [True, True]]
    """
    return jnp.asarray(np.tril(np.ones((query_length, key_length), dtype=bool)))


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


class MultiHeadAttention(Chainable, pax.Module):
    """Multi-head attention (Vaswani et al., 2017) over inputs [..., time, model_dim].

    Queries, keys and values are projected to `num_heads` heads of `key_size` (`value_size` for
    values), attention weights are `softmax(q . k / sqrt(key_size))` over key positions, and the
    concatenated heads are projected back to `model_dim`.

    The positional arguments are PAX v0.4.3's, `(num_heads, key_size, w_init_scale)`, and so is
    the default `model_dim = num_heads * key_size`; PAX's projection names (`query_projection`,
    ...) read the same submodules as `query_proj`, ....

    `mask` (boolean, True = may attend) broadcasts against the logits [..., heads, query, key];
    `causal=True` additionally hides key positions after each query position. `with_cache`
    gives a copy for decoding, whose calls continue one another.

    Args:
      num_heads: number of heads.
      key_size: size of each query/key head.
      w_init_scale: PAX's initializer: variance scaling with this factor (fan-in, normal).
      model_dim: input and output width; defaults to `num_heads * key_size`.
      value_size: size of each value head; defaults to `key_size`.
      causal: hide future key positions from each query position.
      w_init: an initializer for the four projections instead of `w_init_scale`.
      implementation: passed to `jax.nn.dot_product_attention` ("xla", "cudnn", or None to let
        JAX choose).
      rng_key, name: as for every layer.

    Example:
        >>> mha = nn.MultiHeadAttention(2, 4, model_dim=8, causal=True)
        >>> mha
        MultiHeadAttention(num_heads=2, key_size=4, value_size=4, model_dim=8, causal=True, \
implementation=None)
        >>> mha(jnp.ones((1, 5, 8))).shape
        (1, 5, 8)
    """

    def __init__(
        self,
        num_heads: int,
        key_size: int,
        w_init_scale: float | None = None,
        *,
        model_dim: int | None = None,
        value_size: int | None = None,
        causal: bool = False,
        w_init: Initializer | None = None,
        implementation: str | None = None,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(IMPLEMENTATION_MSG.format(got=implementation))
        if implementation == "cudnn" and jax.default_backend() != "gpu":  # not at the 1st step
            raise ValueError(CUDNN_MSG.format(backend=jax.default_backend()))
        if w_init_scale is not None:
            if w_init is not None:
                raise ValueError(BOTH_INITS_MSG)
            w_init = jax.nn.initializers.variance_scaling(w_init_scale, "fan_in", "normal")
        value_size = value_size or key_size
        model_dim = model_dim or num_heads * key_size
        self.num_heads, self.key_size, self.value_size = num_heads, key_size, value_size
        self.model_dim, self.causal, self.implementation = model_dim, causal, implementation
        q_key, k_key, v_key, o_key = split_rng_key(rng_key, 4)
        self.query_proj = Linear(model_dim, num_heads * key_size, w_init=w_init, rng_key=q_key)
        self.key_proj = Linear(model_dim, num_heads * key_size, w_init=w_init, rng_key=k_key)
        self.value_proj = Linear(model_dim, num_heads * value_size, w_init=w_init, rng_key=v_key)
        self.output_proj = Linear(num_heads * value_size, model_dim, w_init=w_init, rng_key=o_key)

    # PAX v0.4.3's names of the projections, for code that reads weights.
    query_projection = property(lambda self: self.query_proj)
    key_projection = property(lambda self: self.key_proj)
    value_projection = property(lambda self: self.value_proj)
    output_projection = property(lambda self: self.output_proj)
    model_size = property(lambda self: self.model_dim)

    # A class attribute, not an instance one: a layer without a cache shows none in its repr.
    cache: KVCache | None = None

    def with_cache(self, batch_size: int, max_len: int) -> MultiHeadAttention:
        """A copy for self-attention decoding that keeps the keys and values of what it has
        seen (a `KVCache` of `max_len` positions): each call then attends to the positions of
        the calls before it too. Call it through `pax.purecall`, which returns the copy with its
        cache extended.

        Example:
            >>> mha = nn.MultiHeadAttention(2, 4, causal=True)
            >>> decoder = mha.with_cache(batch_size=1, max_len=4)
            >>> decoder, y = pax.purecall(decoder, jnp.ones((1, 3, 8)))  # the prompt
            >>> decoder, y = pax.purecall(decoder, jnp.ones((1, 1, 8)))  # one more position
            >>> int(decoder.cache.length), y.shape
            (4, (1, 1, 8))
        """
        size = max(self.key_size, self.value_size)  # the padded heads of `__call__`
        return self.replace(cache=KVCache(batch_size, max_len, self.num_heads, size))

    def __call__(
        self,
        query: jax.Array,
        key: jax.Array | None = None,
        value: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Attends from `query` to `key` / `value` (both default to `query`: self-attention);
        with a cache, to the positions of the calls before as well."""
        if self.cache is not None and any(x is not None for x in (key, value, mask)):
            raise ValueError(CACHE_SELF_ONLY_MSG)
        key = query if key is None else key
        value = key if value is None else value
        heads, lead = self.num_heads, query.shape[:-2]
        # dot_product_attention takes [batch, time, heads, size]: one batch axis, one head size.
        size = max(self.key_size, self.value_size)

        def heads_of(proj: Linear, x: jax.Array, head_size: int) -> jax.Array:
            h = proj(x).reshape(-1, x.shape[-2], heads, head_size)
            # Zero padding changes no dot product: q . k and the weighted sum of v are the same.
            return _pad_last(h, size)

        q = heads_of(self.query_proj, query, self.key_size)
        k = heads_of(self.key_proj, key, self.key_size)
        v = heads_of(self.value_proj, value, self.value_size)
        if self.cache is not None:
            start = self.cache.length
            k, v, _ = self.cache.extend(k, v)
            mask = self.cache.visible(start, query.shape[-2], self.causal)
        elif mask is not None:
            mask = jnp.asarray(mask, bool)
            if mask.ndim > 3:
                tail = mask.shape[-3:]
                mask = jnp.broadcast_to(mask, (*lead, *tail)).reshape(-1, *tail)
        out = jax.nn.dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            scale=1.0 / math.sqrt(self.key_size),
            is_causal=self.causal and self.cache is None,
            implementation=self.implementation,
        )
        out = out[..., : self.value_size].reshape(*lead, query.shape[-2], heads * self.value_size)
        return self.output_proj(out)
