"""Splitting a module into trainable parameters and everything else, and merging back.

`select_parameters` keeps the trainable parameters (those of modules that are not frozen) and puts
None everywhere else; `select_states` keeps the rest. The two are a partition: updating a module
with both gives the module back. Results keep the module structure, so they are modules too and
go through `jax.grad`, optax and `tree_map` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax

from paxtrain.core.module import MODULE, PARAMETER, Module, _is_module, child_fields, rebuild

M = TypeVar("M", bound=Module)


def _is_trainable(module: Module, kind: str) -> bool:
    return kind == PARAMETER and not module.__dict__["_pax_info"].frozen


def _none_like(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda _: None, tree)


def map_array_fields(fn: Callable[..., Any], module: M, *others: M) -> M:
    """Rebuilds a module tree, replacing each parameter or state field by `fn`'s result.

    `fn(node, kind, value, *other_values)` is called for every parameter and state field of every
    module node; `others` are trees of the same structure, walked alongside.

    Example:
        >>> doubled = map_array_fields(lambda node, kind, v: v * 2, linear)  # doctest: +SKIP
    """
    fields = {}
    other_fields = [dict((n, v) for n, _, v in child_fields(o)) for o in others]
    for name, kind, value in child_fields(module):
        other_values = [f[name] for f in other_fields]
        if kind == MODULE:
            fields[name] = jax.tree_util.tree_map(
                lambda m, *os: map_array_fields(fn, m, *os) if _is_module(m) else m,
                value,
                *other_values,
                is_leaf=_is_module,
            )
        else:
            fields[name] = fn(module, kind, value, *other_values)
    return rebuild(module, fields)


def select_parameters(module: M) -> M:
    """The module with every leaf that is not a trainable parameter replaced by None.

    Example:
        >>> params = pax.select_parameters(net)  # doctest: +SKIP
    """
    return map_array_fields(
        lambda node, kind, v: v if _is_trainable(node, kind) else _none_like(v), module
    )


def select_states(module: M) -> M:
    """The complement of `select_parameters`: states and frozen parameters, None elsewhere.

    Example:
        >>> states = pax.select_states(net)  # doctest: +SKIP
    """
    return map_array_fields(
        lambda node, kind, v: _none_like(v) if _is_trainable(node, kind) else v, module
    )


def update_parameters(module: M, params: M) -> M:
    """A copy of `module` whose trainable parameters come from `params`.

    Example:
        >>> net = pax.update_parameters(net, params=new_params)  # doctest: +SKIP
    """
    return map_array_fields(
        lambda node, kind, v, p: p if _is_trainable(node, kind) else v, module, params
    )


def update_states(module: M, states: M) -> M:
    """A copy of `module` whose states (and frozen parameters) come from `states`.

    Example:
        >>> net = pax.update_states(net, states=new_states)  # doctest: +SKIP
    """
    return map_array_fields(
        lambda node, kind, v, s: v if _is_trainable(node, kind) else s, module, states
    )


def freeze_parameters(module: M) -> M:
    """A copy whose parameters (submodules included) are no longer trainable.

    Example:
        >>> net = net.replace(encoder=pax.freeze_parameters(net.encoder))  # doctest: +SKIP
    """
    return module.apply(lambda m: m._pax_with_info(frozen=True))


def unfreeze_parameters(module: M, *, origin: M | None = None) -> M:
    """A copy whose parameters (submodules included) are trainable again.

    With `origin` (PAX's form), exactly the parameters trainable in `origin` become trainable:
    `unfreeze_parameters(freeze_parameters(net), origin=net)` has `net`'s structure.

    Example:
        >>> net = pax.unfreeze_parameters(net)  # doctest: +SKIP
        >>> net = pax.unfreeze_parameters(frozen, origin=net)  # doctest: +SKIP
    """
    if origin is None:
        return module.apply(lambda m: m._pax_with_info(frozen=False))
    leaves, structure = jax.tree_util.tree_flatten(module)
    if structure != jax.tree_util.tree_structure(freeze_parameters(origin)):
        raise ValueError(
            "paxtrain: unfreeze_parameters(module, origin=...): `module` must be "
            "`freeze_parameters(origin)` with any values, i.e. have its structure."
        )
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(origin), leaves)


def enable_train_mode(module: M) -> M:
    """`module.train()` as a function.

    Example:
        >>> net = pax.enable_train_mode(net)  # doctest: +SKIP
    """
    return module.train()


def enable_eval_mode(module: M) -> M:
    """`module.eval()` as a function.

    Example:
        >>> net = pax.enable_eval_mode(net)  # doctest: +SKIP
    """
    return module.eval()
