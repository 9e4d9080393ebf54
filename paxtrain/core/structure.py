"""Comparing the structure of two pytrees of modules, with a message that shows where they differ."""

from __future__ import annotations

from typing import Any

import jax

from paxtrain.core import errors


def assert_structure_equal(tree_a: Any, tree_b: Any) -> None:
    """Raises ValueError naming the first path where two trees differ in structure.

    Example:
        >>> pax.assert_structure_equal({"w": jnp.ones(2)}, {"w": jnp.zeros(2)})  # equal: None
        >>> pax.assert_structure_equal({"w": 1.0}, {"b": 1.0})
        Traceback (most recent call last):
        ValueError: ...
    """
    if jax.tree_util.tree_structure(tree_a) == jax.tree_util.tree_structure(tree_b):
        return
    leaves_a = jax.tree_util.tree_flatten_with_path(tree_a)[0]
    leaves_b = jax.tree_util.tree_flatten_with_path(tree_b)[0]
    for (path_a, _), (path_b, _) in zip(leaves_a, leaves_b):
        if path_a != path_b:
            raise ValueError(
                errors.STRUCTURE_MISMATCH_MSG.format(
                    path=jax.tree_util.keystr(path_a),
                    left=jax.tree_util.keystr(path_a),
                    right=jax.tree_util.keystr(path_b),
                )
            )
    if len(leaves_a) != len(leaves_b):
        longer, which = (leaves_a, "left") if len(leaves_a) > len(leaves_b) else (leaves_b, "right")
        extra = jax.tree_util.keystr(longer[min(len(leaves_a), len(leaves_b))][0])
        raise ValueError(
            errors.STRUCTURE_MISMATCH_MSG.format(
                path=extra,
                left=f"{len(leaves_a)} leaves" + (f" (has {extra})" if which == "left" else ""),
                right=f"{len(leaves_b)} leaves" + (f" (has {extra})" if which == "right" else ""),
            )
        )
    raise ValueError(
        errors.STRUCTURE_MISMATCH_MSG.format(
            path="<static data>",
            left=str(jax.tree_util.tree_structure(tree_a)),
            right=str(jax.tree_util.tree_structure(tree_b)),
        )
    )
