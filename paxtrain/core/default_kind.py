"""`ParameterModule`, `StateModule` and `PaxKind`: PAX v0.4.3's ways of declaring attributes.

In a `ParameterModule` (`StateModule`) an attribute assigned a value made only of arrays is
declared a parameter (state) on assignment, as PAX did; submodules stay submodules. `PaxKind`
members are the kind strings `register_subtree` takes, so PAX's `kind=pax.PaxKind.STATE` works.
"""

from __future__ import annotations

import enum
from typing import Any

import jax

from paxtrain.core.module import MODULE, PARAMETER, STATE, Module, _is_array, _is_module


class PaxKind(enum.StrEnum):
    """The kinds of module attributes; each member equals the kind string paxtrain uses.

    Example:
        >>> pax.PaxKind.STATE == "state"
        True
    """

    PARAMETER = PARAMETER
    STATE = STATE
    MODULE = MODULE


def _only_arrays(value: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(value, is_leaf=_is_module)
    return bool(leaves) and all(_is_array(leaf) and not _is_module(leaf) for leaf in leaves)


class _DefaultKindModule(Module):
    default_kind: str

    def __setattr__(self, name: str, value: Any) -> None:
        info = self.__dict__["_pax_info"]
        if info.kind_of(name) is None and _only_arrays(value):
            self._pax_check_mutable(name)
            self._pax_declare(name, self.default_kind)
        super().__setattr__(name, value)


class ParameterModule(_DefaultKindModule):
    """A module whose array attributes are parameters without `register_parameter`.

    Example:
        >>> class Scale(pax.ParameterModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = jnp.ones(3)
        >>> jax.tree_util.tree_leaves(pax.select_parameters(Scale()))[0].shape
        (3,)
    """

    default_kind = PARAMETER


class StateModule(_DefaultKindModule):
    """A module whose array attributes are states without `register_state`.

    Example:
        >>> class Counter(pax.StateModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.count = jnp.array(0)
        >>> jax.tree_util.tree_leaves(pax.select_parameters(Counter()))
        []
    """

    default_kind = STATE
