"""Weight initializers: functions `(rng_key, shape, dtype) -> array`, as in `jax.nn.initializers`.

Any `jax.nn.initializers` function can be passed as a layer's `w_init` / `b_init`. This file names
the defaults the layers use and turns a layer's optional `rng_key` into one key per parameter.
Layers call their initializers once in `__init__` and do not keep them: a stored closure would
make two identically configured layers differ in their pytree structure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

import paxtrain as pax

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]

zeros: Initializer = jax.nn.initializers.zeros
ones: Initializer = jax.nn.initializers.ones
# PAX v0.4.3's default for weights: a plain (untruncated) normal of variance 1/fan_in, which
# keeps the scale of activations roughly constant with depth. The fan-in of a conv kernel
# [*k, in, out] counts the receptive field too. A PAX model trains from the same distribution.


def compiled(init: Initializer) -> Initializer:
    """`init` compiled on its own, so that a model built eagerly and one built under `jax.jit`
    (the sharded build of `paxtrain fit`) draw the same bits: inlined into a larger program,
    XLA folds a normal sampler's scaling differently and rounds differently.

    Example:
        >>> init = compiled(jax.nn.initializers.normal(0.5))
        >>> init(jax.random.PRNGKey(0), (2, 3), jnp.float32).shape
        (2, 3)
    """
    return jax.jit(init, static_argnums=(1, 2), static_argnames=("shape", "dtype"))


fan_in_normal: Initializer = compiled(jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal"))


@functools.lru_cache  # one compiled sampler per stddev, so that building a layer again is free
def normal(stddev: float = 1.0) -> Initializer:
    """Samples a plain normal with `stddev` (PAX's `Embed` default is `normal(0.01)`).

    Compiled on its own (see `compiled`).

    Example:
        >>> init = normal(0.01)
        >>> init(jax.random.PRNGKey(0), (2, 3), jnp.float32).shape
        (2, 3)
    """
    return compiled(jax.nn.initializers.normal(stddev))


def truncated_normal(stddev: float = 1.0) -> Initializer:
    """Samples a normal with `stddev`, truncated to two standard deviations.

    Example:
        >>> init = truncated_normal(0.02)
        >>> init(jax.random.PRNGKey(0), (2, 3), jnp.float32).shape
        (2, 3)
    """
    return jax.nn.initializers.truncated_normal(stddev)


def split_rng_key(rng_key: jax.Array | None, num: int) -> list[jax.Array]:
    """`num` independent keys from `rng_key`, or from `pax.next_rng_key()` when it is None.

    Example:
        >>> w_key, b_key = split_rng_key(None, 2)
    """
    if rng_key is None:
        rng_key = pax.next_rng_key()
    return list(jax.random.split(rng_key, num))
