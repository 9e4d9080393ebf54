"""Mixed precision: a policy stored on a module as data, applied when the module is called.

Parameters are kept in `param_dtype`; a call casts floating parameters and inputs to
`compute_dtype`, runs, and casts floating outputs to `output_dtype`. States (running statistics,
counters, keys) keep their own dtype during the call, so their updates are as precise as they are
stored; a layer that computes with a floating state casts it to its input's dtype, as
`nn.BatchNorm` does. Inside `pure`, only the states the call assigned are written back, in their
original dtype; parameters never are, so float32 master weights are never rounded to the compute
dtype. Because the policy is data of the module, not a generated subclass, it survives copying,
`replace`, freezing, pickling and transformations.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from paxtrain.core import errors
from paxtrain.core.module import PARAMETER, Module
from paxtrain.core.mutability import current_token, mutation_error
from paxtrain.core.partition import map_array_fields
from paxtrain.core.pure import mutable_copies

M = TypeVar("M", bound=Module)


def _cast_floating(tree: Any, dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)


@dataclasses.dataclass(frozen=True)
class MpPolicy:
    """Dtypes for parameters, computation and outputs.

    Example:
        >>> policy = pax.MpPolicy.from_string("params=float32,compute=bfloat16,output=float32")
        >>> policy.compute_dtype
        dtype(bfloat16)
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.bfloat16
    output_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, jnp.dtype(getattr(self, field.name)))

    @classmethod
    def from_string(cls, spec: str) -> MpPolicy:
        """Parses `"params=float32,compute=bfloat16,output=float32"` (any order, any subset)."""
        names = {"params": "param_dtype", "compute": "compute_dtype", "output": "output_dtype"}
        kwargs = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            if key.strip() not in names:
                raise ValueError(f"Unknown policy field {key!r} in {spec!r}; use {sorted(names)}.")
            kwargs[names[key.strip()]] = value.strip()
        return cls(**kwargs)

    def __str__(self) -> str:
        return (
            f"params={self.param_dtype.name},compute={self.compute_dtype.name},"
            f"output={self.output_dtype.name}"
        )

    def call(self, module: Module, method: Callable, args: tuple, kwargs: dict) -> Any:
        """Runs `method(module, *args, **kwargs)` under this policy (used by `Module.__call__`)."""
        compute = _cast_parameters(module, self.compute_dtype)
        compute._pax_set_info(mp_policy=None)
        args, kwargs = _cast_floating((args, kwargs), self.compute_dtype)
        if mutation_error(module.__dict__["_pax_token"]) is not None:
            return _cast_floating(method(compute, *args, **kwargs), self.output_dtype)

        token = current_token()
        compute = mutable_copies(compute, token, [])
        out = method(compute, *args, **kwargs)
        restored = mutable_copies(map_array_fields(_assigned_states, compute, module), token, [])
        for name, value in restored.__dict__.items():
            if name not in ("_pax_info", "_pax_token", "_pax_flat"):
                module.__dict__[name] = value
        module.__dict__.pop("_pax_flat", None)
        return _cast_floating(out, self.output_dtype)


def _assigned_states(node: Module, kind: str, new: Any, old: Any) -> Any:
    """The value to keep after a call: the original parameter, or the state the call assigned."""
    if kind == PARAMETER:
        return old
    return jax.tree_util.tree_map(
        lambda n, o: n.astype(o.dtype) if n is not o and hasattr(o, "dtype") else n, new, old
    )


def _cast_parameters(module: M, dtype: Any) -> M:
    return map_array_fields(
        lambda node, kind, v: _cast_floating(v, dtype) if kind == PARAMETER else v, module
    )


def as_policy(mp_policy: Any) -> MpPolicy:
    """An `MpPolicy` from a policy, a string, or a `jmp.Policy`-like object (PAX took those).

    Anything else is refused here, not at the first call.

    Example:
        >>> as_policy("params=float32,compute=bfloat16,output=float32").compute_dtype
        dtype(bfloat16)
    """
    if isinstance(mp_policy, MpPolicy):
        return mp_policy
    if isinstance(mp_policy, str):
        return MpPolicy.from_string(mp_policy)
    fields = [f.name for f in dataclasses.fields(MpPolicy)]
    if all(hasattr(mp_policy, name) for name in fields):
        try:
            return MpPolicy(**{name: getattr(mp_policy, name) for name in fields})
        except TypeError:
            pass
    raise TypeError(errors.NOT_A_POLICY_MSG.format(kind=type(mp_policy).__name__))


def apply_mp_policy(module: M, mp_policy: MpPolicy | str | Any) -> M:
    """A copy of `module` that runs under a mixed-precision policy.

    `mp_policy` is an `MpPolicy`, a string such as `"params=float32,compute=bfloat16,
    output=float32"` or, as in PAX, a `jmp.Policy` (any object with `param_dtype`,
    `compute_dtype` and `output_dtype`). Floating parameters are cast to `param_dtype` now.

    Example:
        >>> net = pax.apply_mp_policy(nn.Linear(2, 3), "params=float32,compute=bfloat16,output=float32")
        >>> net.weight.dtype, net(jnp.ones((1, 2))).dtype
        (dtype('float32'), dtype('float32'))
    """
    policy = as_policy(mp_policy)
    current = module.__dict__["_pax_info"].mp_policy
    if current is not None:
        raise ValueError(
            errors.MP_ALREADY_APPLIED_MSG.format(cls=type(module).__name__, policy=current)
        )
    return _cast_parameters(module, policy.param_dtype)._pax_with_info(mp_policy=policy)


def with_mp_policy(method: Callable) -> Callable:
    """A bound method of a module, run under the module's mixed-precision policy as `__call__` is.

    A policy applies to `__call__`; a method such as `loss` that uses submodules directly
    (`self.encoder(x)`) rather than `self(x)` would otherwise run in the parameters' dtype. The
    `Trainer` calls `model.loss` and `model.evaluate` through this.

    Example:
        >>> class Net(pax.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(2, 1)
        ...     def loss(self, x):
        ...         return self.fc(x).dtype.name
        >>> net = pax.apply_mp_policy(Net(), "params=float32,compute=bfloat16,output=float32")
        >>> net.loss(jnp.ones((1, 2))), pax.with_mp_policy(net.loss)(jnp.ones((1, 2)))
        ('float32', 'bfloat16')
    """
    module = method.__self__
    policy = module.__dict__["_pax_info"].mp_policy
    if policy is None:
        return method
    function = method.__func__
    return types.MethodType(
        lambda self, *args, **kwargs: policy.call(self, function, args, kwargs), module
    )


def unwrap_mp_policy(module: M) -> M:
    """A copy of `module` without its mixed-precision policy (parameters keep their dtype).

    Example:
        >>> net = pax.apply_mp_policy(nn.Linear(2, 3), "params=float32,compute=bfloat16,output=bfloat16")
        >>> pax.unwrap_mp_policy(net)(jnp.ones((1, 2))).dtype
        dtype('float32')
    """
    if module.__dict__["_pax_info"].mp_policy is None:
        raise ValueError(f"`{type(module).__name__}` has no mixed-precision policy to remove.")
    return module._pax_with_info(mp_policy=None)
