"""`KVCache`: the keys and values an attention layer has seen, kept as module states.

Decoding one token at a time then costs one new query against the cache instead of recomputing
every position: the module core's founding pattern (states threaded through
`pax.module_and_value`) applied to attention. The buffers have a fixed length, so a jitted
decode loop compiles once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import paxtrain as pax

FULL_MSG = (
    "The KV cache holds {max_len} positions and {length} are filled: {new} more do not fit. "
    "Build the decoder with a larger max_len (prompt plus new tokens)."
)


class KVCache(pax.Module):
    """Keys and values [batch, max_len, kv_heads, head_dim] of the positions seen so far, and
    how many positions that is (`length`).

    Example:
        >>> cache = nn.KVCache(batch_size=1, max_len=8, num_kv_heads=2, head_dim=4)
        >>> cache, (keys, values, start) = pax.purecall(
        ...     cache.extend, jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 2, 4)))
        >>> int(cache.length), int(start), keys.shape
        (3, 0, (1, 8, 2, 4))
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: jnp.dtype = jnp.float32,
    ):
        super().__init__()
        self.max_len = max_len
        shape = (batch_size, max_len, num_kv_heads, head_dim)
        self.register_state("keys", jnp.zeros(shape, dtype))
        self.register_state("values", jnp.zeros(shape, dtype))
        self.register_state("length", jnp.zeros((), jnp.int32))

    def extend(self, keys: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Appends keys and values [batch, new, kv_heads, head_dim]; returns the whole buffers
        and the position of the first new one. Call it through `pax.purecall`/`pure`."""
        start, new = self.length, keys.shape[1]
        try:
            filled = int(start)
        except jax.errors.ConcretizationTypeError:  # traced: callers check the length up front
            filled = None
        # Past the end, dynamic_update_slice would move the write back over earlier positions.
        if filled is not None and filled + new > self.max_len:
            raise ValueError(FULL_MSG.format(max_len=self.max_len, length=filled, new=new))
        index = (0, start, 0, 0)
        self.keys = jax.lax.dynamic_update_slice(self.keys, keys.astype(self.keys.dtype), index)
        self.values = jax.lax.dynamic_update_slice(
            self.values, values.astype(self.values.dtype), index
        )
        self.length = start + new
        return self.keys, self.values, start

    def visible(self, start: jax.Array, time: int, causal: bool) -> jax.Array:
        """[time, max_len] booleans: which positions of the buffers each of the `time` queries
        written from `start` on may see (filled ones; with `causal`, none after its own).

        Example:
            >>> cache = nn.KVCache(batch_size=1, max_len=4, num_kv_heads=1, head_dim=2)
            >>> cache.visible(1, 2, causal=True).tolist()
            [[True, True, False, False], [True, True, True, False]]
        """
        keys = jnp.arange(self.max_len)[None, :]
        last = (start + jnp.arange(time))[:, None] if causal else start + time - 1
        return jnp.broadcast_to(keys <= last, (time, self.max_len))
