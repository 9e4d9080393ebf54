"""`Module`: an immutable pytree of parameters, states and submodules.

Every subclass is registered as a JAX pytree when it is defined. Its children are the declared
parameters and states and the attributes that hold submodules; every other attribute (sizes,
activation functions, the training flag) is static data of the tree definition.

Flattening is cached on the instance: a module can only change inside a mutable context, and every
assignment drops the cache. Static data is interned, so two modules of the same structure share one
`_Structure` object, which `jax.jit` hashes and compares as a plain int.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import operator
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import numpy as np

from paxtrain.core import errors
from paxtrain.core.mutability import MutationToken, mutable_context, mutation_error

T = TypeVar("T", bound="Module")

PARAMETER = "parameter"
STATE = "state"
MODULE = "module"
_KINDS = (PARAMETER, STATE, MODULE)
_INTERNAL_PREFIX = "_pax_"


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    """Bookkeeping of one module node; part of its static pytree data."""

    name: str | None = None
    training: bool = True
    parameter_names: frozenset[str] = frozenset()
    state_names: frozenset[str] = frozenset()
    frozen: bool = False
    mp_policy: Any = None

    def kind_of(self, attr: str) -> str | None:
        if attr in self.parameter_names:
            return PARAMETER
        if attr in self.state_names:
            return STATE
        return None


def _is_module(x: Any) -> bool:
    return isinstance(x, Module)


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _hashable(value: Any) -> Any:
    """A hashable stand-in for a static attribute value, equal exactly when the values are."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_hashable(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, slice):  # unhashable before Python 3.12; an axis spec of LayerNorm
        return ("slice", value.start, value.stop, value.step)
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _is_mutable_static(value: Any) -> bool:
    """Whether a static attribute value could be changed in place (a list, a plain object).

    Shared, not copied: a value whose class defines its own `__hash__` (numbers, strings,
    dtypes, enums, frozen dataclasses, a `Mesh`: by Python's convention, hashing by value
    means immutable), a tuple of such values, and callables (functions, activation functions,
    partials, jitted functions, which PAX did not copy either). Slices and ranges hash by value
    only from Python 3.12 on.
    """
    if isinstance(value, tuple):
        return any(map(_is_mutable_static, value))
    if value is None or callable(value) or isinstance(value, (slice, range)):
        return False
    return type(value).__hash__ in (None, object.__hash__)


class _Structure(int):
    """The static part of a flattened module: class, child names, static attributes, info.

    Structures are interned, one live object per distinct content, and each is an `int` holding
    a unique id: JAX hashes and compares the static data of every module node on every jitted
    call, and int hashing and comparison run in C, with no Python frame per node.
    """

    cls: type
    tree_names: tuple[str, ...]
    keys: tuple[jax.tree_util.GetAttrKey, ...]
    static_dict: dict[str, Any]
    # The static attributes that `pax.pure` deep-copies, so that its inputs never change.
    mutable_static_names: tuple[str, ...]
    # The static attributes plus the internal ones of a fresh immutable instance.
    instance_template: dict[str, Any]
    info: ModuleInfo

    def __repr__(self) -> str:
        return f"{self.cls.__name__}{list(self.tree_names)}"

    def __reduce__(self):
        return _intern_structure, (
            self.cls,
            self.tree_names,
            tuple(self.static_dict.items()),
            self.info,
        )


# Kept for the life of the process (ints cannot be weakly referenced); a program has a few
# distinct module structures, each created once.
_interned: dict[tuple, _Structure] = {}
_structure_ids = itertools.count()


def _intern_structure(cls: type, tree_names: tuple, static_items: tuple, info) -> _Structure:
    key = (cls, tree_names, tuple((k, _hashable(v)) for k, v in static_items), info)
    structure = _interned.get(key)
    if structure is None:
        structure = _Structure(next(_structure_ids))
        structure.cls = cls
        structure.tree_names = tree_names
        structure.keys = tuple(jax.tree_util.GetAttrKey(n) for n in tree_names)
        structure.static_dict = dict(static_items)
        structure.mutable_static_names = tuple(
            name for name, value in static_items if _is_mutable_static(value)
        )
        structure.instance_template = {
            **structure.static_dict,
            "_pax_info": info,
            "_pax_token": None,
        }
        structure.info = info
        _interned[key] = structure
    return structure


def _compute_flat(module: Module) -> tuple[tuple, _Structure]:
    d = module.__dict__
    info = d["_pax_info"]
    tree_names, children, static_items = [], [], []
    for name, value in d.items():
        if name.startswith(_INTERNAL_PREFIX):
            continue
        if info.kind_of(name) is not None or _contains_module(value):
            tree_names.append(name)
            children.append(value)
        else:
            static_items.append((name, value))
    structure = _intern_structure(type(module), tuple(tree_names), tuple(static_items), info)
    flat = (tuple(children), structure)
    d["_pax_flat"] = flat
    return flat


class _FlatCache:
    """`module._pax_flat`: the instance's cached flattened form, computed on first access.

    A non-data descriptor, so a cached value in the instance `__dict__` wins, and dropping it
    (`__dict__.pop("_pax_flat")`) makes the next access recompute it.
    """

    def __get__(self, module: Module | None, owner: type) -> Any:
        return self if module is None else _compute_flat(module)


# Called by JAX for every module node of every jitted call: an attribute read in C, with no
# Python frame, when the cache is warm.
_flatten = operator.attrgetter("_pax_flat")


def _flatten_with_keys(module: Module):
    children, structure = _flatten(module)
    return tuple(zip(structure.keys, children)), structure


def _unflatten(structure: _Structure, children) -> Module:
    module = object.__new__(structure.cls)
    children = tuple(children)
    d = module.__dict__
    d.update(structure.instance_template)
    d.update(zip(structure.tree_names, children))
    d["_pax_flat"] = (children, structure)
    return module


def _contains_module(value: Any) -> bool:
    if isinstance(value, Module):
        return True
    if isinstance(value, (list, tuple, dict)):
        return any(map(_is_module, jax.tree_util.tree_leaves(value, is_leaf=_is_module)))
    return False


def _register_pytree(cls: type) -> None:
    jax.tree_util.register_pytree_with_keys(
        cls, _flatten_with_keys, _unflatten, flatten_func=_flatten
    )


def _with_mp_policy(call: Callable) -> Callable:
    """Wraps a subclass's `__call__` so that a mixed-precision policy on the instance applies."""

    def __call__(self, *args, **kwargs):
        policy = self.__dict__["_pax_info"].mp_policy
        if policy is None:
            return call(self, *args, **kwargs)
        return policy.call(self, call, args, kwargs)

    __call__.__wrapped__ = call
    __call__.__doc__ = call.__doc__
    __call__.__qualname__ = call.__qualname__
    return __call__


def _constructing(module: Module) -> bool:
    token = module.__dict__["_pax_token"]
    return token is not None and token.kind == "init"


class _ModuleMeta(type):
    """Runs `__init__` inside a mutable context, so construction is the one time a module that
    nobody passed to `pure` may be mutated."""

    def __call__(cls, *args, **kwargs):
        module = cls.__new__(cls)
        d = module.__dict__
        d["_pax_info"] = ModuleInfo()
        with mutable_context("init") as token:
            d["_pax_token"] = token
            try:
                module.__init__(*args, **kwargs)
                # As in PAX, an array may be assigned first and declared later in `__init__`
                # (`set_attribute_kind`, a dataclass's `__post_init__`); undeclared at the end
                # is refused.
                info = d["_pax_info"]
                for attr, value in list(d.items()):
                    if not attr.startswith(_INTERNAL_PREFIX) and info.kind_of(attr) is None:
                        _check_undeclared_value(module, attr, value)
                _check_not_shared(module)
            finally:
                d["_pax_token"] = None
                d.pop("_pax_adding_kind", None)
        return module


class Module(metaclass=_ModuleMeta):
    """Base class of all paxtrain modules: an immutable pytree.

    Declare arrays with `register_parameter` / `register_state` (or inside `add_parameters()` /
    `add_states()`); assign submodules as plain attributes. Outside `__init__`, a module can only
    be changed on a copy, through `pax.pure`, `pax.module_and_value` or `pax.purecall`.

    Example:
        >>> import jax.numpy as jnp, paxtrain as pax
        >>> class Counter(pax.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.register_state("count", jnp.array(0))
        ...     def __call__(self, x):
        ...         self.count = self.count + 1
        ...         return x
        >>> counter, _ = pax.module_and_value(Counter())(1.0)
        >>> int(counter.count)
        1
    """

    def __init__(self, name: str | None = None):
        if name is not None:
            self._pax_set_info(name=name)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__slots__" in cls.__dict__:
            # A slot is outside `__dict__`, so an array there would be invisible to the pytree.
            raise errors.PaxValueError(errors.SLOTS_MSG.format(cls=cls.__name__))
        for attr, value in cls.__dict__.items():
            if _is_array(value) or _is_module(value):
                raise errors.PaxValueError(
                    errors.CLASS_ARRAY_MSG.format(cls=cls.__name__, attr=attr)
                )
        if "__call__" in cls.__dict__:
            cls.__call__ = _with_mp_policy(cls.__dict__["__call__"])
        # `_ModuleMeta.__call__(*args, **kwargs)` would otherwise hide the constructor's
        # signature from `inspect`, and so from config validation and IDEs.
        init_signature = inspect.signature(cls.__init__)
        cls.__signature__ = init_signature.replace(
            parameters=list(init_signature.parameters.values())[1:]
        )
        _register_pytree(cls)

    # ----------------------------------------------------------------- mutation and declaration
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        self._pax_check_mutable(name)
        if name == "name" and (value is None or isinstance(value, str)):
            # PAX allowed `self.name = ...` (and a dataclass field `name`); kept in the info,
            # and in `__dict__` for a dataclass, whose class attribute default hides `name`.
            self._pax_set_info(name=value)
            d["name"] = value
            return
        if name in _MANAGED_ATTRS or name.startswith(_INTERNAL_PREFIX):
            fix = _MANAGED_ATTRS.get(name, "Choose another attribute name.")
            raise AttributeError(
                errors.RESERVED_ATTR_MSG.format(cls=type(self).__name__, attr=name, fix=fix)
            )
        info = d["_pax_info"]
        if info.kind_of(name) is None:
            adding = d.get("_pax_adding_kind")
            # As in PAX, a submodule assigned inside `add_parameters()` stays a submodule.
            if adding is not None and not _contains_module(value):
                self._pax_declare(name, adding)
            elif not _constructing(self):  # during __init__, checked when it returns
                _check_undeclared_value(self, name, value)
        d[name] = value
        d.pop("_pax_flat", None)

    def __delattr__(self, name: str) -> None:
        # As in PAX: a module's attributes are its structure; deleting one would make it
        # another module silently. Immutable modules get the immutability message first.
        self._pax_check_mutable(name)
        raise ValueError(errors.DELETE_ATTR_MSG.format(cls=type(self).__name__, attr=name))

    def _pax_check_mutable(self, attr: str) -> None:
        token = self.__dict__["_pax_token"]
        reason = mutation_error(token)
        if reason is not None:
            raise ValueError(_mutation_message(reason, self, attr, token))

    def _pax_set_info(self, **changes: Any) -> None:
        d = self.__dict__
        d["_pax_info"] = dataclasses.replace(d["_pax_info"], **changes)
        d.pop("_pax_flat", None)

    def _pax_declare(self, name: str, kind: str) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        info = self.__dict__["_pax_info"]
        old = info.kind_of(name)
        if old is not None and old != kind:
            raise ValueError(
                errors.KIND_CONFLICT_MSG.format(
                    cls=type(self).__name__, attr=name, new=kind, old=old
                )
            )
        if kind == PARAMETER:
            self._pax_set_info(parameter_names=info.parameter_names | {name})
        elif kind == STATE:
            self._pax_set_info(state_names=info.state_names | {name})

    def register_subtree(self, name: str, value: Any, kind: str) -> None:
        """Declares attribute `name` as a `"parameter"`, `"state"` or `"module"` subtree.

        Example:
            >>> self.register_subtree("moments", {"mu": jnp.zeros(3)}, kind="state")  # doctest: +SKIP
        """
        self._pax_check_mutable(name)
        if kind == MODULE:
            leaves = jax.tree_util.tree_leaves(value, is_leaf=_is_module)
            if not all(map(_is_module, leaves)):
                raise errors.PaxValueError(
                    f"register_module(s)({name!r}, ...) expects modules, got {value!r}"
                )
        self._pax_declare(name, kind)
        if kind != MODULE:
            value = jax.tree_util.tree_map(_as_array, value)
        setattr(self, name, value)

    def set_attribute_kind(self, **kinds: str) -> None:
        """Declares existing attributes as `"parameter"` / `"state"` (or `pax.P` / `pax.S`).

        Example:
            >>> self.weight = jnp.zeros(3); self.set_attribute_kind(weight=pax.P)  # doctest: +SKIP
        """
        for attr, kind in kinds.items():
            if attr not in self.__dict__:
                raise AttributeError(f"`{type(self).__name__}.{attr}` does not exist.")
            self._pax_check_mutable(attr)
            self._pax_declare(attr, kind)
            setattr(self, attr, getattr(self, attr))

    def register_parameter(self, name: str, value: Any) -> None:
        """Declares a trainable array (or pytree of arrays) attribute.

        Example:
            >>> self.register_parameter("weight", jnp.zeros((3, 4)))  # doctest: +SKIP
        """
        self.register_subtree(name, value, PARAMETER)

    def register_state(self, name: str, value: Any) -> None:
        """Declares a non-trainable array attribute (counters, running statistics, RNG keys).

        Example:
            >>> self.register_state("count", jnp.array(0))  # doctest: +SKIP
        """
        self.register_subtree(name, value, STATE)

    def register_module(self, name: str, value: Module) -> None:
        """Sets a submodule attribute, checking that it is one.

        Example:
            >>> self.register_module("encoder", Linear(3, 4))  # doctest: +SKIP
        """
        self.register_subtree(name, value, MODULE)

    def register_modules(self, name: str, value: Any) -> None:
        """Sets an attribute holding a list, tuple or dict of submodules.

        Example:
            >>> self.register_modules("layers", [Linear(3, 3), Linear(3, 3)])  # doctest: +SKIP
        """
        self.register_subtree(name, value, MODULE)

    @contextlib.contextmanager
    def add_parameters(self) -> Iterator[None]:
        """Inside this block, new array attributes are declared as parameters.

        Example:
            >>> with self.add_parameters():  # doctest: +SKIP
            ...     self.weight = jnp.zeros((3, 4))
        """
        with self._pax_adding(PARAMETER):
            yield

    @contextlib.contextmanager
    def add_states(self) -> Iterator[None]:
        """Inside this block, new array attributes are declared as states.

        Example:
            >>> with self.add_states():  # doctest: +SKIP
            ...     self.count = jnp.array(0)
        """
        with self._pax_adding(STATE):
            yield

    @contextlib.contextmanager
    def _pax_adding(self, kind: str) -> Iterator[None]:
        self._pax_check_mutable(f"<{kind}s>")
        d = self.__dict__
        # Not `_pax_adding`: an instance entry of the method's own name would hide the method,
        # and a nested `add_states()` inside `add_parameters()` would call a string.
        previous = d.get("_pax_adding_kind")
        d["_pax_adding_kind"] = kind
        try:
            yield
        finally:
            if previous is None:
                d.pop("_pax_adding_kind", None)
            else:
                d["_pax_adding_kind"] = previous

    # ------------------------------------------------------------------------------ properties
    @property
    def name(self) -> str | None:
        """The name given to `Module.__init__(name=...)`, or None."""
        return self.__dict__["_pax_info"].name

    @property
    def training(self) -> bool:
        """True in training mode (the default), False after `eval()`."""
        return self.__dict__["_pax_info"].training

    # ------------------------------------------------------------------------ tree operations
    def train(self: T) -> T:
        """A copy in training mode, submodules included.

        Example:
            >>> net = net.train()  # doctest: +SKIP
        """
        return self.apply(lambda m: m._pax_with_info(training=True))

    def eval(self: T) -> T:
        """A copy in evaluation mode (Dropout off, BatchNorm frozen), submodules included.

        Example:
            >>> net = net.eval()  # doctest: +SKIP
        """
        return self.apply(lambda m: m._pax_with_info(training=False))

    def _pax_with_info(self: T, **changes: Any) -> T:
        new = rebuild(self, {})
        new._pax_set_info(**changes)
        return new

    def copy(self: T) -> T:
        """A new module tree sharing the (immutable) arrays.

        Example:
            >>> net2 = net.copy()  # doctest: +SKIP
        """
        return jax.tree_util.tree_map(lambda x: x, self)

    def parameters(self: T) -> T:
        """This module with every leaf that is not a trainable parameter set to None.

        Example:
            >>> params = net.parameters()  # doctest: +SKIP
        """
        from paxtrain.core.partition import select_parameters

        return select_parameters(self)

    def update_parameters(self: T, params: T) -> T:
        """A copy whose trainable parameters are taken from `params` (as from `parameters()`).

        Example:
            >>> net = net.update_parameters(new_params)  # doctest: +SKIP
        """
        from paxtrain.core.partition import update_parameters

        return update_parameters(self, params)

    def replace(self: T, **fields: Any) -> T:
        """A copy with some attributes replaced; declarations are kept.

        Example:
            >>> bigger = linear.replace(weight=jnp.ones((3, 4)))  # doctest: +SKIP
        """
        new = rebuild(self, {})
        with mutable_context("replace") as token:
            new.__dict__["_pax_token"] = token
            try:
                for name, value in fields.items():
                    setattr(new, name, value)
            finally:
                new.__dict__["_pax_token"] = None
        return new

    def replace_node(self: T, node: Any, value: Any) -> T:
        """A copy in which the submodule or array `node` (found by identity) becomes `value`.

        Example:
            >>> net = net.replace_node(net.layers[0], Linear(3, 5))  # doctest: +SKIP
        """
        found = False

        def swap(x: Any) -> Any:
            nonlocal found
            if x is node:
                found = True
                return value
            if not _is_module(x):
                return x
            fields = {
                name: jax.tree_util.tree_map(
                    swap, child, is_leaf=lambda y: y is node or _is_module(y)
                )
                for name, _, child in child_fields(x)
            }
            return rebuild(x, fields)

        new = swap(self)
        if not found:
            raise ValueError(
                f"replace_node: the given node is not a submodule or array of this "
                f"{type(self).__name__}; pass the object itself, e.g. `net.replace_node(net.fc, ...)`."
            )
        return new

    def apply(self: T, fn: Callable[[Module], Module]) -> T:
        """Applies `fn` to every module of the tree, children before parents.

        Example:
            >>> net = net.apply(lambda m: m.eval() if isinstance(m, Dropout) else m)  # doctest: +SKIP
        """
        children, structure = _flatten(self)
        fields = {}
        for name, child in zip(structure.tree_names, children):
            if structure.info.kind_of(name) is None:
                fields[name] = jax.tree_util.tree_map(
                    lambda m: m.apply(fn) if _is_module(m) else m, child, is_leaf=_is_module
                )
        return fn(rebuild(self, fields))

    def submodules(self) -> list[Module]:
        """The direct submodules, in attribute order.

        Example:
            >>> [type(m).__name__ for m in net.submodules()]  # doctest: +SKIP
        """
        children, structure = _flatten(self)
        return [
            leaf
            for name, child in zip(structure.tree_names, children)
            if structure.info.kind_of(name) is None
            for leaf in jax.tree_util.tree_leaves(child, is_leaf=_is_module)
            if _is_module(leaf)
        ]

    def scan_bugs(self: T) -> T:
        """Raises if a submodule or an array appears twice in the tree; returns self otherwise.

        Example:
            >>> net = net.scan_bugs()  # doctest: +SKIP
        """
        seen: dict[int, str] = {}
        for path, x in _walk_with_paths(self, type(self).__name__):
            if not (_is_module(x) or _is_array(x)):
                continue
            if id(x) in seen:
                msg = errors.SHARED_MODULE_MSG if _is_module(x) else errors.SHARED_ARRAY_MSG
                raise ValueError(msg.format(path_a=seen[id(x)], path_b=path, cls=type(x).__name__))
            seen[id(x)] = path
        return self

    # ----------------------------------------------------------------------------- display
    def __repr__(self) -> str:
        d = self.__dict__
        info = d["_pax_info"]
        fields = []
        for attr, value in d.items():
            if attr.startswith(_INTERNAL_PREFIX) or attr == "name" or info.kind_of(attr):
                continue
            if _contains_module(value):
                continue
            shown = _short_repr(value)
            if shown is not None:
                fields.append(f"{attr}={shown}")
        if info.mp_policy is not None:
            fields.append(f"mp_policy={info.mp_policy}")
        # PAX's place for the name: `(fc1) Linear(in_dim=3, ...)`.
        name = f"({info.name}) " if info.name is not None else ""
        return f"{name}{type(self).__name__}({', '.join(fields)})"

    def summary(self, return_list: bool = False) -> str | list[str]:
        """A tree drawing of the module, its submodules and their arrays.

        Example:
            >>> print(net.summary())  # doctest: +SKIP
            MLP(sizes=(2, 3))
            ├── layers[0]: Linear(in_dim=2, out_dim=3)  weight f32[2,3] bias f32[3]
            └── layers[1]: Linear(in_dim=3, out_dim=1)  weight f32[3,1] bias f32[1]
        """
        lines = list(_summary_lines(self, "", "", ""))
        return lines if return_list else "\n".join(lines)

    def __eq__(self, other: object) -> bool:
        """PAX's equality: the same class and tree structure, and the very same leaf arrays.

        So a module equals its copies and `replace`s that keep every array, and two modules
        built separately (other arrays, even if equal in value) differ.
        """
        if self is other:
            return True
        if type(self) is not type(other):
            return False
        leaves, structure = jax.tree_util.tree_flatten(self)
        other_leaves, other_structure = jax.tree_util.tree_flatten(other)
        return structure == other_structure and all(
            a is b for a, b in zip(leaves, other_leaves, strict=True)
        )

    def __hash__(self) -> int:
        """Hash of the tree structure and the leaves' shapes and dtypes, as PAX."""
        leaves, structure = jax.tree_util.tree_flatten(self)
        return hash((structure, tuple((x.shape, str(x.dtype)) for x in leaves)))

    def map(self: T, func: Callable[..., Any], *modules: T) -> T:
        """`jax.tree_util.tree_map(func, self, *modules)`, as PAX's `Module.map`.

        Example:
            >>> params = params.map(jax.lax.sub, updates)  # doctest: +SKIP
        """
        return jax.tree_util.tree_map(func, self, *modules)

    def __invert__(self: T) -> T:
        """`~module` is `module.parameters()`, as in PAX."""
        return self.parameters()

    def __or__(self: T, other: T) -> T:
        """`a | b`: `a` with every leaf that `b` has (not None) taken from `b`, as in PAX.

        Example:
            >>> model = model | new_params  # doctest: +SKIP
        """
        return jax.tree_util.tree_map(
            lambda b, a: a if b is None else b, other, self, is_leaf=lambda x: x is None
        )

    def __mod__(self, args: Any) -> tuple[Any, Any]:
        """`module % x` is `pax.purecall(module, x)`; `module % (x, y)` passes two arguments."""
        from paxtrain.core.pure import module_and_value

        if isinstance(args, tuple):
            return module_and_value(self)(*args)
        return module_and_value(self)(args)

    # ---------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_pax_token", "_pax_flat")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__["_pax_token"] = None


Module._pax_flat = _FlatCache()
_register_pytree(Module)

_MANAGED_ATTRS = {
    "name": "Pass it to `super().__init__(name=...)`.",
    "training": "Use `module.train()` or `module.eval()`, which return a copy.",
}


def _as_array(x: Any) -> Any:
    if isinstance(x, (int, float, complex, bool, np.ndarray, np.generic)):
        return jax.numpy.asarray(x)
    return x


def _check_undeclared_value(module: Module, name: str, value: Any) -> None:
    leaves = jax.tree_util.tree_leaves(value, is_leaf=_is_module)
    has_module = any(map(_is_module, leaves))
    if has_module:
        others = [leaf for leaf in leaves if not _is_module(leaf)]
        if others:
            raise ValueError(
                errors.MIXED_MODULE_FIELD_MSG.format(
                    cls=type(module).__name__, attr=name, other=_short_repr(others[0]) or "an array"
                )
            )
    elif any(map(_is_array, leaves)):
        raise ValueError(errors.UNDECLARED_ARRAY_MSG.format(cls=type(module).__name__, attr=name))


def _mutation_message(reason: str, module: Module, attr: str, token: MutationToken | None) -> str:
    cls = type(module).__name__
    if reason == "immutable":
        return errors.IMMUTABLE_MSG.format(cls=cls, attr=attr)
    where = f"by `{token.kind}`" if token is not None else ""
    inside = (
        "inside a JAX transformation (jit, scan, vmap, grad...) that started later"
        if reason == "transform"
        else "inside a nested `pax.pure` call it was not passed to"
    )
    return errors.LEAK_MSG.format(cls=cls, attr=attr, where=where, inside=inside)


def rebuild(module: T, fields: dict[str, Any]) -> T:
    """A new immutable module like `module`, with some attribute values replaced.

    Used by the core's tree operations; the caller keeps declarations consistent.

    Example:
        >>> shifted = rebuild(linear, {"bias": linear.bias + 1})  # doctest: +SKIP
    """
    new = object.__new__(type(module))
    d = new.__dict__
    d.update(module.__dict__)
    d.update(fields)
    d["_pax_token"] = None
    if fields:
        d.pop("_pax_flat", None)
    return new


def child_fields(module: Module) -> list[tuple[str, str, Any]]:
    """(attribute, kind, value) for every child attribute of `module`, in order.

    Example:
        >>> [(a, k) for a, k, _ in child_fields(linear)]  # doctest: +SKIP
        [('weight', 'parameter'), ('bias', 'parameter')]
    """
    children, structure = _flatten(module)
    info = structure.info
    return [
        (name, info.kind_of(name) or MODULE, child)
        for name, child in zip(structure.tree_names, children)
    ]


def _walk_with_paths(module: Module, prefix: str) -> Iterator[tuple[str, Any]]:
    """(path, node) for every submodule and array leaf below `module`."""
    for name, _, child in child_fields(module):
        leaves = jax.tree_util.tree_flatten_with_path(child, is_leaf=_is_module)[0]
        for key_path, leaf in leaves:
            path = f"{prefix}.{name}{jax.tree_util.keystr(key_path)}"
            yield path, leaf
            if _is_module(leaf):
                yield from _walk_with_paths(leaf, path)


def _check_not_shared(module: Module) -> None:
    """Refuses a submodule or a parameter array that appears twice below `module` (PAX did).

    States may share arrays (optax states often do): they are replaced, never updated in place.
    """
    seen: dict[int, str] = {}

    def visit(node: Module, prefix: str) -> None:
        for name, kind, child in child_fields(node):
            if kind == STATE:
                continue
            for key_path, leaf in jax.tree_util.tree_flatten_with_path(child, is_leaf=_is_module)[
                0
            ]:
                if not (_is_module(leaf) or _is_array(leaf)):
                    continue
                path = f"{prefix}.{name}{jax.tree_util.keystr(key_path)}"
                if id(leaf) in seen:
                    msg = errors.SHARED_MODULE_MSG if _is_module(leaf) else errors.SHARED_ARRAY_MSG
                    raise ValueError(
                        msg.format(path_a=seen[id(leaf)], path_b=path, cls=type(leaf).__name__)
                    )
                seen[id(leaf)] = path
                if _is_module(leaf):
                    visit(leaf, path)

    visit(module, type(module).__name__)


def iter_modules(tree: Any) -> Iterator[Module]:
    """Every module in `tree` (any pytree), parents before children.

    Example:
        >>> [type(m).__name__ for m in iter_modules(net)]  # doctest: +SKIP
    """
    for leaf in jax.tree_util.tree_leaves(tree, is_leaf=_is_module):
        if _is_module(leaf):
            yield leaf
            for _, kind, child in child_fields(leaf):
                if kind == MODULE:
                    yield from iter_modules(child)


def _short_repr(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    if isinstance(value, tuple):
        parts = [_short_repr(v) for v in value]
        if all(p is not None for p in parts):
            return f"({', '.join(parts)}{',' if len(parts) == 1 else ''})"
        return None
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return None


def _array_repr(x: Any) -> str:
    if _is_array(x) or isinstance(x, jax.ShapeDtypeStruct):  # an abstract module prints alike
        dtype = np.dtype(x.dtype)
        short = {"f": "f", "i": "i", "u": "u", "b": "bool", "c": "c"}.get(dtype.kind, dtype.name)
        bits = "" if short == "bool" else str(dtype.itemsize * 8)
        return f"{short}{bits}[{','.join(map(str, x.shape))}]"
    return repr(x)


def _summary_lines(module: Module, label: str, first: str, rest: str) -> Iterator[str]:
    arrays = []
    subs = []
    for name, kind, child in child_fields(module):
        if kind == MODULE:
            for key_path, leaf in jax.tree_util.tree_flatten_with_path(child, is_leaf=_is_module)[
                0
            ]:
                subs.append((f"{name}{jax.tree_util.keystr(key_path)}", leaf))
        else:
            for key_path, leaf in jax.tree_util.tree_flatten_with_path(child)[0]:
                arrays.append(f"{name}{jax.tree_util.keystr(key_path)} {_array_repr(leaf)}")
    line = f"{first}{label}{module!r}"
    if module.__dict__["_pax_info"].frozen:
        line += " [frozen]"
    if arrays:
        line += "  " + " ".join(arrays)
    yield line
    for i, (name, sub) in enumerate(subs):
        last = i == len(subs) - 1
        yield from _summary_lines(
            sub,
            f"{name}: ",
            rest + ("└── " if last else "├── "),
            rest + ("    " if last else "│   "),
        )
