"""What a checkpoint records to detect damage: a fingerprint of each array computed on the
devices (older checkpoints: CRC-32s computed on the host), and the mismatch they report."""

from __future__ import annotations

import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CHECKSUM_MSG = "the {kind} of `{path}` is {actual}, not the {expected} recorded when it was saved"


def _fingerprint(x: jax.Array) -> jax.Array:
    """Sum over the array's bits of `word[i] * (2i + 1)` mod 2**32: any one flipped bit, or two
    words swapped, changes it; integer sums, so the same for every layout of the array."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 8:
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)  # two words an element
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    words = words.reshape(-1)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)


_fingerprints = jax.jit(lambda arrays: {path: _fingerprint(x) for path, x in arrays.items()})


def array_fingerprints(flat: dict[str, Any]) -> dict[str, str]:
    """A 32-bit fingerprint of each array's bits (hex), keyed by path, computed where the arrays
    are: one small transfer, not a host copy of the state, and the same on every process for
    arrays split over several (every process must call it, like a save).

    Example:
        >>> array_fingerprints({"w": jnp.arange(3.0)})
        {'w': 'fe800000'}
    """
    sums = _fingerprints({path: jnp.asarray(x) for path, x in flat.items()})
    return {path: f"{int(np.asarray(x.addressable_data(0))):08x}" for path, x in sums.items()}


def array_checksums(flat: dict[str, Any]) -> dict[str, str]:
    """A CRC-32 of the bytes of each array this process holds whole (hex), keyed by path: what
    checkpoints from before `array_fingerprints` recorded, and are still verified with.

    Example:
        >>> array_checksums({"w": np.zeros(3, np.float32)})
        {'w': '7bd5c66f'}
    """
    sums = {}
    for path, x in flat.items():
        if getattr(x, "is_fully_addressable", True):
            data = np.ascontiguousarray(np.asarray(x))
            sums[path] = f"{zlib.crc32(data.reshape(-1).view(np.uint8)):08x}"
    return sums


class _ChecksumMismatch(Exception):
    """Restored arrays differ from what was saved: a damaged checkpoint."""
