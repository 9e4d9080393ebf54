"""The one way paxtrain writes the path of an array or a submodule: dotted, as checkpoints key
their arrays (`model.layers.0.weight`, `optimizer.opt_state.0.mu.fc.bias`).

`freeze`, `init_from_include`, the tensor-parallel rules, checkpoint keys and the error messages
that name a leaf all use it, so a regex written for one fits the others. Patterns written for
JAX's own rendering (`.model.layers[0].weight`, the tensor rules' dialect before this one) are
still accepted by `path_search`.

    >>> import jax
    >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path({"layers": [1, 2]})[0]]
    ['layers.0', 'layers.1']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax

KeyPath = Sequence[Any]  # a leaf's keys, as `jax.tree_util.tree_flatten_with_path` gives them

# A dotted path's parts that are list positions: JAX's rendering writes them `[0]`.
_INDEX_PART = re.compile(r"\.(\d+)(?=\.|$)")

# A part of JAX's rendering: a list position `[0]` or a dictionary key `['w']`.
_JAX_PART = re.compile(r"\[(?:'([^']+)'|(\d+))\]")


def path_str(key_path: KeyPath, prefix: str = "") -> str:
    """The dotted path of a leaf from its JAX key path (`tree_flatten_with_path`), below
    `prefix` if given.

    Example:
        >>> path_str((jax.tree_util.GetAttrKey("layers"), jax.tree_util.SequenceKey(0)))
        'layers.0'
        >>> path_str((jax.tree_util.DictKey("w"),), prefix="model")
        'model.w'
    """
    path = jax.tree_util.keystr(tuple(key_path), simple=True, separator=".")
    return f"{prefix}.{path}" if prefix and path else prefix or path


def path_search(pattern: str, path: str | KeyPath) -> bool:
    """Whether the regex `pattern` is found in a leaf's dotted path, or in JAX's rendering of it
    (`.layers[0].weight`, `['cell']['weight']`), which tensor-parallel rules used before:
    `layers\\.0` and `layers\\[0\\]` both select the first layer.

    Args:
      pattern: a regular expression.
      path: the dotted path, or the JAX key path of the leaf (then JAX's rendering is exact,
        dictionary keys included).

    Example:
        >>> path_search(r"layers\\.0\\.weight$", "model.layers.0.weight")
        True
        >>> path_search(r"layers\\[0\\]\\.weight$", "model.layers.0.weight")
        True
        >>> path_search(r"layers\\.1", "model.layers.0.weight")
        False
    """
    if isinstance(path, str):
        # A path written in JAX's rendering (`.layers[0]`, `['w']`) is read as its dotted form.
        dotted = _JAX_PART.sub(lambda m: f".{m[1] or m[2]}", path).lstrip(".")
        renderings = {dotted, _INDEX_PART.sub(r"[\1]", f".{dotted}"), path}
    else:
        renderings = {path_str(path), jax.tree_util.keystr(tuple(path))}
    return any(re.search(pattern, rendering) for rendering in renderings)
