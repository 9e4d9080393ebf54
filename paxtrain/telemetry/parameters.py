"""Parameter counts: of a module, and of each of its submodules, drawn as a tree.

Works on abstract modules (`jax.eval_shape` of a constructor): a count needs shapes only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax

import paxtrain as pax
from paxtrain.core.module import MODULE, child_fields


def count_parameters(module: Any, trainable_only: bool = False) -> int:
    """The number of parameters of `module`: all of them, or only the trainable ones (those
    of modules that are not frozen, as `parameters()` selects them).

    Example:
        >>> from paxtrain.parallel import seeded
        >>> layer = jax.eval_shape(seeded(lambda: nn.Linear(3, 2), 0))
        >>> count_parameters(layer), count_parameters(pax.freeze_parameters(layer), True)
        (8, 0)
    """
    if not trainable_only:
        module = pax.unfreeze_parameters(module)
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(module.parameters()))


def _submodules(module: pax.Module) -> Iterator[tuple[str, pax.Module]]:
    for name, kind, child in child_fields(module):
        if kind != MODULE:
            continue
        is_module = lambda x: isinstance(x, pax.Module)  # noqa: E731
        for path, sub in jax.tree_util.tree_flatten_with_path(child, is_leaf=is_module)[0]:
            if isinstance(sub, pax.Module):
                yield f"{name}{jax.tree_util.keystr(path)}", sub


def parameter_tree(module: pax.Module, max_depth: int = 3) -> list[str]:
    """Lines drawing `module`'s submodules down to `max_depth`, each with its parameter count
    (its own and its submodules', frozen ones too); submodules without parameters are left out.

    Example:
        >>> from paxtrain.parallel import seeded
        >>> net = jax.eval_shape(seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)), 0))
        >>> print("\\n".join(parameter_tree(net)))
        Sequential  21
        ├── layers[0]: Linear  16
        └── layers[1]: Linear  5
    """
    return list(_lines(module, "", "", "", max_depth))


def _lines(module: pax.Module, label: str, first: str, rest: str, depth: int) -> Iterator[str]:
    yield f"{first}{label}{type(module).__name__}  {count_parameters(module):,}"
    if depth == 0:
        return
    subs = [(n, s) for n, s in _submodules(module) if count_parameters(s)]
    for i, (name, sub) in enumerate(subs):
        last = i == len(subs) - 1
        branch, indent = ("└── ", "    ") if last else ("├── ", "│   ")
        yield from _lines(sub, f"{name}: ", rest + branch, rest + indent, depth - 1)
