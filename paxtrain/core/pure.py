"""`pure`, `module_and_value` and `purecall`: the only ways to change a module.

`pure(f)` calls `f` on copies of the modules among its arguments, with mutation allowed on those
copies only and only at the current JAX trace level, then makes everything immutable again. The
caller's modules are never touched; changes come back only through `f`'s return value.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

from paxtrain.core import errors
from paxtrain.core.module import (
    MODULE,
    Module,
    _flatten,
    _is_module,
    child_fields,
    iter_modules,
    rebuild,
)
from paxtrain.core.mutability import MutationToken, mutable_context

M = TypeVar("M", bound=Module)
F = TypeVar("F", bound=Callable)


def _mutable_copy(module: Module, token: MutationToken, copies: list[Module]) -> Module:
    # PAX's promise: the function sees copies, so mutating a list or a plain object attribute
    # in place must not reach the caller's module. The names are computed once per structure,
    # so a module of arrays, numbers and functions pays nothing.
    fields = {
        name: _deep_copy(module.__dict__[name]) for name in _flatten(module)[1].mutable_static_names
    }
    fields |= {
        name: jax.tree_util.tree_map(
            lambda m: _mutable_copy(m, token, copies) if _is_module(m) else m,
            child,
            is_leaf=_is_module,
        )
        for name, kind, child in child_fields(module)
        if kind == MODULE
    }
    new = rebuild(module, fields)
    new.__dict__["_pax_token"] = token
    copies.append(new)
    return new


def _deep_copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except TypeError:  # a lock, an open file: shared, as PAX did
        return value


def mutable_copies(tree: Any, token: MutationToken, copies: list[Module]) -> Any:
    """`tree` with every module replaced by a copy that `token`'s context may mutate.

    The copies are appended to `copies`, so the caller can make them immutable again.

    Example:
        >>> with mutable_context("pure") as token:  # doctest: +SKIP
        ...     net = mutable_copies(net, token, copies := [])
    """
    return jax.tree_util.tree_map(
        lambda x: _mutable_copy(x, token, copies) if _is_module(x) else x, tree, is_leaf=_is_module
    )


def _positions(static_argnums: int | Sequence[int] | None) -> frozenset[int]:
    if static_argnums is None:
        return frozenset()
    return frozenset((static_argnums,) if isinstance(static_argnums, int) else static_argnums)


def _bound_module(func: Callable) -> tuple[Callable, tuple[Module, ...]]:
    """`func` as an unbound function and the module it is bound to, if any (as PAX did)."""
    if isinstance(func, Module):
        return _call_method(func), (func,)
    if inspect.ismethod(func) and isinstance(func.__self__, Module):
        return func.__func__, (func.__self__,)
    if callable(func):
        return func, ()
    raise errors.PaxValueError(f"pax.pure expects a function; got {type(func).__name__}.")


def pure(func: F, static_argnums: int | Sequence[int] | None = None, check_leaks: bool = True) -> F:
    """Makes `func` pure: it runs on mutable copies of its module arguments.

    Inputs are never modified, including attributes that are not arrays (a list, a plain
    object): each copy gets its own deep copy of those, as in PAX. Modules in the result are
    immutable. Mutating a module that is not an argument (a closed-over one) raises, as does
    mutating inside a JAX transformation that started within `func` without passing the
    module in.

    As in PAX, `func` may be a bound method of a module (`pax.pure(sgd.step)(grads, params)`) or
    a module: the module is copied like an argument and may update itself; `func`'s return value
    is returned (use `pax.module_and_value` to get the updated module too).

    `static_argnums` (as in PAX) are positions passed as they are, not copied: modules there
    stay immutable; for a bound method or a module, position 0 is the module, as in PAX.
    `check_leaks` is accepted for PAX code; paxtrain's leak check (see
    `paxtrain/core/README.md`, section 3) cannot be turned off, so a leak always raises.

    Example:
        >>> @pax.pure  # doctest: +SKIP
        ... def step(counter, x):
        ...     y = counter(x)         # may mutate `counter`: it is a copy
        ...     return counter, y
        >>> counter, y = step(counter, x)  # doctest: +SKIP
    """

    del check_leaks  # always on
    static = _positions(static_argnums)
    unbound, bound = _bound_module(func)

    @functools.wraps(func)
    def pure_func(*args: Any, **kwargs: Any) -> Any:
        copies: list[Module] = []
        with mutable_context("pax.pure") as token:
            try:
                args = tuple(
                    a if i in static else mutable_copies(a, token, copies)
                    for i, a in enumerate((*bound, *args))
                )
                kwargs = mutable_copies(kwargs, token, copies)
                out = unbound(*args, **kwargs)
            finally:
                for module in copies:
                    module.__dict__["_pax_token"] = None
        for module in iter_modules(out):
            if module.__dict__["_pax_token"] is token:
                module.__dict__["_pax_token"] = None
        return out

    return pure_func


def _call_and_return_module(method: Callable, module: Module, *args: Any, **kwargs: Any):
    value = method(module, *args, **kwargs)
    return module, value


_pure_call_and_return_module = pure(_call_and_return_module)


def _call_method(module: Module) -> Callable:
    for klass in type(module).__mro__:
        if "__call__" in klass.__dict__:
            return klass.__dict__["__call__"]
    raise errors.PaxValueError(
        f"`{type(module).__name__}` defines no `__call__`; pass the method to call instead: "
        f"`pax.module_and_value(module.method)(...)`."
    )


def module_and_value(
    module_or_method: Any,
    static_argnums: int | Sequence[int] | None = None,
    check_leaks: bool = True,
) -> Callable[..., tuple[Any, Any]]:
    """Calls a module (or one of its methods) on a mutable copy; returns `(new_module, value)`.

    Also a method decorator: the decorated method returns `(new_self, value)`.
    `static_argnums` count the call's arguments (not `self`) and, with `check_leaks`, are as
    for `pure`.

    Example:
        >>> counter, y = pax.module_and_value(counter)(x)             # doctest: +SKIP
        >>> rng, key = pax.module_and_value(rng.next_rng_key)()       # doctest: +SKIP
        >>> class Net(pax.Module):                                    # doctest: +SKIP
        ...     @pax.module_and_value
        ...     def step(self, x): ...
        >>> net, y = net.step(x)                                      # doctest: +SKIP
    """
    call = _pure_call_and_return_module
    if static_argnums is not None:
        # Positions of `_call_and_return_module(method, module, *args)`.
        call = pure(
            _call_and_return_module,
            tuple(i + 2 for i in _positions(static_argnums)),
            check_leaks,
        )
    if isinstance(module_or_method, Module):
        return functools.partial(call, _call_method(module_or_method), module_or_method)
    if inspect.ismethod(module_or_method) and isinstance(module_or_method.__self__, Module):
        return functools.partial(call, module_or_method.__func__, module_or_method.__self__)
    if callable(module_or_method):
        method = module_or_method

        @functools.wraps(method)
        def method_returning_module(self: Module, *args: Any, **kwargs: Any):
            return call(method, self, *args, **kwargs)

        return method_returning_module
    raise errors.PaxValueError(
        f"module_and_value expects a module, a bound method of a module or a method to decorate; "
        f"got {type(module_or_method).__name__}."
    )


def purecall(module_or_method: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`pax.module_and_value(module)(*args, **kwargs)` in one call.

    Example:
        >>> counter, y = pax.purecall(counter, x)  # doctest: +SKIP
    """
    return module_and_value(module_or_method)(*args, **kwargs)
