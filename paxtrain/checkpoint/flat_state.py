"""A state as a checkpoint holds it: its arrays keyed by their paths, and their verification.

A checkpoint's `state` item is a flat dict (`model.layers.0.weight` -> array); restoring reads
each array into the shape, dtype and sharding of the state restored into, then checks it against
the fingerprint recorded when it was saved (`checkpoint.integrity`).

    >>> flat = flatten_state({"w": jnp.zeros((2, 3))})
    >>> abstract_arrays(flat)["w"].shape
    (2, 3)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from paxtrain.checkpoint.integrity import (
    CHECKSUM_MSG,
    _ChecksumMismatch,
    array_checksums,
    array_fingerprints,
)
from paxtrain.core.tree import path_str


def flatten_state(state: Any) -> dict[str, jax.Array]:
    """The arrays of a pytree keyed by their paths (`paxtrain.core.tree`'s dotted dialect),
    e.g. `model.layers.0.weight`.

    Example:
        >>> list(flatten_state({"a": [1, 2]}))
        ['a.0', 'a.1']
    """
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {path_str(path): leaf for path, leaf in leaves}


def abstract_arrays(flat: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """What Orbax restores each array into: its shape, dtype and sharding.

    Example:
        >>> abstract_arrays({"b": jnp.zeros(4, jnp.int32)})["b"].dtype
        dtype('int32')
    """
    return {
        path: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
        for path, x in flat.items()
    }


def verify_arrays(meta: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Raises `_ChecksumMismatch` (CHECKSUM_MSG) when an array differs from what was saved.

    Example:
        >>> arrays = {"w": jnp.arange(3.0)}
        >>> verify_arrays({"fingerprints": array_fingerprints(arrays)}, arrays)  # no error
    """
    # Older checkpoints recorded CRC-32s of the arrays a process held whole.
    kind, sums = ("fingerprint", array_fingerprints) if "fingerprints" in meta else (
        "CRC-32", array_checksums
    )  # fmt: skip
    expected = meta.get("fingerprints", meta.get("checksums", {}))
    for path, value in sums(arrays).items():
        if path in expected and expected[path] != value:
            raise _ChecksumMismatch(
                CHECKSUM_MSG.format(kind=kind, path=path, actual=value, expected=expected[path])
            )
