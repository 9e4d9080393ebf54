"""`Dropout`: zeroes random elements in training mode, with its key kept as a state."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.nn.sequential import Chainable

RATE_MSG = """\
Dropout rate must satisfy 0 <= rate < 1 (the fraction of elements zeroed); got {rate}."""


def dropout(rng_key: jax.Array, dropout_rate: float, x: jax.Array) -> jax.Array:
    """Zeroes each element of `x` with probability `dropout_rate`, scales the rest by
    `1 / (1 - dropout_rate)` so that `E[output] = x`. PAX v0.4.3's `pax.dropout`, same mask.

    Example:
        >>> y = pax.dropout(jax.random.PRNGKey(0), 0.5, jnp.ones(4))
        >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
    """
    if not 0 <= dropout_rate < 1:
        raise ValueError(RATE_MSG.format(rate=dropout_rate))
    if dropout_rate == 0:
        return x
    dropped = jax.random.bernoulli(rng_key, dropout_rate, x.shape)
    return jnp.where(dropped, jnp.zeros_like(x), x / (1.0 - dropout_rate))


class Dropout(Chainable, pax.Module):
    """Zeroes each element with probability `dropout_rate` and scales the rest by `1 / (1 - dropout_rate)`.

    The key is a state (`rng_key`): each training call splits it and stores the new key, so
    successive calls draw different masks and the key goes in and out of jitted steps with the
    module. That update is a mutation: call through `pax.purecall` / `pax.module_and_value`.
    In eval mode (`dropout.eval()`) it is the identity.

    Example:
        >>> drop = nn.Dropout(0.5, rng_key=jax.random.PRNGKey(0))
        >>> drop, y = pax.purecall(drop, jnp.ones(4))
        >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
        >>> drop.eval()(jnp.ones(2)).tolist()
        [1.0, 1.0]
    """

    def __init__(
        self, dropout_rate: float, *, rng_key: jax.Array | None = None, name: str | None = None
    ):
        super().__init__(name=name)
        if not 0 <= dropout_rate < 1:
            raise ValueError(RATE_MSG.format(rate=dropout_rate))
        self.dropout_rate = dropout_rate
        self.register_state("rng_key", pax.next_rng_key() if rng_key is None else rng_key)

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.training or self.dropout_rate == 0:
            return x
        self.rng_key, key = jax.random.split(self.rng_key)
        return dropout(key, self.dropout_rate, x)
