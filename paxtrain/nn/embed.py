"""`Embed`: a lookup table from integer ids to vectors."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.nn.initializers import Initializer, normal, split_rng_key
from paxtrain.nn.sequential import Chainable


class Embed(Chainable, pax.Module):
    """Maps integer ids of any shape to rows of `weight` [vocab_size, embed_dim].

    The default initializer is PAX v0.4.3's: a plain normal of std 0.01.

    Ids outside `[0, vocab_size)` give NaN rows (`jnp.take`'s "fill" mode), so a bad id shows up
    in the loss instead of silently reading a clamped row.

    Example:
        >>> embed = nn.Embed(10, 4)
        >>> embed
        Embed(vocab_size=10, embed_dim=4)
        >>> embed(jnp.array([[1, 2, 3]])).shape
        (1, 3, 4)
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        w_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        (key,) = split_rng_key(rng_key, 1)
        # PAX's default: its docstring says truncated normal, its code draws a plain normal.
        w_init = w_init or normal(0.01)
        self.register_parameter("weight", w_init(key, (vocab_size, embed_dim), jnp.float32))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight, ids, axis=0)
