"""Random keys: a global key for building modules, and `RngSeq`, a module that owns its key.

The global key is for code that runs once, outside transformations (initializing weights).
Anything traced (dropout in a jitted step) keeps its key as a module state, so that the key is
threaded in and out of compiled functions and saved in checkpoints.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from paxtrain.core import errors
from paxtrain.core.module import Module

_DEFAULT_SEED = 42


class _GlobalKey(threading.local):
    def __init__(self) -> None:
        # Made on first use, not at import: creating an array starts JAX's backends, which a
        # multi-process run must leave to `jax.distributed.initialize` (paxtrain.parallel).
        self.key: jax.Array | None = None
        self.traced_build = False  # inside `rng_key_scope`: the key may be a tracer


_global = _GlobalKey()


def seed_rng_key(seed: int) -> None:
    """Resets this thread's global key, making module initialization reproducible.

    Example:
        >>> pax.seed_rng_key(42)
        >>> a = pax.next_rng_key(); pax.seed_rng_key(42); b = pax.next_rng_key()
        >>> bool((a == b).all())
        True
    """
    _global.key = jax.random.PRNGKey(seed)


def next_rng_key() -> jax.Array:
    """A fresh key split from this thread's global key. Not allowed inside transformations.

    Example:
        >>> weight = jax.random.normal(pax.next_rng_key(), (3, 4))
    """
    if _global.key is None:
        _global.key = jax.random.PRNGKey(_DEFAULT_SEED)
    key, subkey = jax.random.split(_global.key)
    if isinstance(key, jax.core.Tracer) and not _global.traced_build:
        raise RuntimeError(errors.RNG_INSIDE_TRANSFORM_MSG)
    _global.key = key
    return subkey


@contextlib.contextmanager
def rng_key_scope(key: jax.Array) -> Iterator[None]:
    """Within, the global key starts from `key`, which may be traced: modules built inside a
    traced function (`jax.jit(build, out_shardings=...)`, `jax.eval_shape(build)`) draw the
    same keys as an eager build after `seed_rng_key`. The previous global key comes back after.

    Example:
        >>> def build():
        ...     with rng_key_scope(jax.random.PRNGKey(0)):
        ...         return jax.random.normal(pax.next_rng_key(), (2,))
        >>> pax.seed_rng_key(0); eager = jax.random.normal(pax.next_rng_key(), (2,))
        >>> bool((jax.jit(build)() == eager).all())
        True
    """
    previous = (_global.key, _global.traced_build)
    _global.key, _global.traced_build = key, True
    try:
        yield
    finally:
        _global.key, _global.traced_build = previous


class RngSeq(Module):
    """A module holding a PRNG key as a state; each `next_rng_key` call advances it.

    Example:
        >>> rng = pax.RngSeq(seed=0)
        >>> rng, key = pax.purecall(rng.next_rng_key)
        >>> rng, (k1, k2) = pax.purecall(rng.next_rng_key, 2)
    """

    def __init__(self, seed: int | None = None, rng_key: jax.Array | None = None):
        super().__init__()
        if rng_key is None:
            rng_key = jax.random.PRNGKey(seed) if seed is not None else next_rng_key()
        self.register_state("_rng_key", jnp.asarray(rng_key))

    def next_rng_key(self, num_keys: int = 1) -> jax.Array | list[jax.Array]:
        """Returns one key, or a list of `num_keys` keys when > 1; advances the sequence in
        training mode only (as PAX), so in eval mode it needs no `purecall` and repeats."""
        keys = jax.random.split(self._rng_key, num_keys + 1)
        if self.training:
            self._rng_key = keys[0]
        return keys[1] if num_keys == 1 else list(keys[1:])
