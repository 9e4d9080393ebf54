"""`_target_` sections: importing the target by name and checking a section's keys and values
against its signature before anything is built."""

from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import re
import types
import typing
from typing import Any

import jax
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from paxtrain.errors import ConfigError

NO_TARGET_MSG = "Config section `{key}` needs a `_target_` naming the class or function to build."


BAD_TARGET_MSG = "`{key}._target_`: cannot import {target!r} ({reason})."


UNKNOWN_ARG_MSG = "`{key}.{arg}` is not a parameter of {target}.{hint}"


MISSING_ARG_MSG = "`{key}` is missing required parameter(s) {args} of {target}."


NOT_FINITE_MSG = (
    "Config key `{key}` is {value}; it must be a finite number, e.g. `{key}={example}`."
)


ARG_TYPE_MSG = (
    "`{key}.{arg}` is {value!r}, but {target} takes {expected} there, e.g. `{key}.{arg}={example}`."
)


ARG_SIZE_MSG = (
    "`{key}.{arg}` is {value}; a size or count must be at least 1, e.g. `{key}.{arg}={example}`."
)


# Parameters of `_target_`s that are sizes or counts by their name: `batch_size`, `seq_len`,
# `hidden_dim`, `num_layers`... An int given to one must be at least 1.
_SIZE_PARAMETER = re.compile(r"(^|_)(size|len|dim|ratio|batches)$|^num_")


# Common short spellings of parameter names, which string similarity misses (`lr` is closer to
# `b1` than to `learning_rate`).
SYNONYMS = {
    "lr": "learning_rate", "learningrate": "learning_rate", "wd": "weight_decay",
    "beta1": "b1", "beta2": "b2", "epsilon": "eps", "steps": "max_steps", "bs": "batch_size",
}  # fmt: skip


def _hint(key: str, candidates: list[str]) -> str:
    """` Did you mean ...?` with the known synonym of the key (`lr`: `learning_rate`) or the
    closest candidates, or the list of valid keys when none is close.

    Example:
        >>> _hint("optimizer.lr", ["optimizer.b1", "optimizer.learning_rate"])
        ' Did you mean `optimizer.learning_rate`?'
    """
    prefix, _, leaf = key.rpartition(".")
    synonym = SYNONYMS.get(leaf.lower())
    meant = f"{prefix}.{synonym}" if prefix and synonym else synonym
    close = [meant] if meant in candidates else difflib.get_close_matches(key, candidates, 3, 0.6)
    return (
        f" Did you mean {', '.join(f'`{c}`' for c in close)}?"
        if close
        else (f" Valid keys here: {', '.join(sorted(candidates))}." if candidates else "")
    )


def _keys_at(node: Any, prefix: str) -> list[str]:
    if not isinstance(node, (DictConfig, dict)):
        return []
    return [f"{prefix}{k}" for k in node]


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value can be passed where `hint` is annotated; annotations other than
    plain scalars, their unions and sequences are not checked."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return _is_target(value)  # a config gives a function only as a `_target_` section
    if hint in _ARRAY_TYPES:
        return isinstance(value, (int, float, list, ListConfig)) and not isinstance(value, bool)
    return True


# Where an annotation takes arrays (`jax.Array`, numpy's, optax's `ArrayLike`), a config gives a
# number or a list of them.
_ARRAY_TYPES = (jax.Array, np.ndarray, np.number, np.bool_, complex)


def _type_name(hint: Any) -> str:
    """What a config may give where `hint` is annotated, in words: `int`, `int | None`, or for
    array-like and callable unions (optax's) `a number | a _target_ section`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        numbers = (int, float, *_ARRAY_TYPES) if set(args) & set(_ARRAY_TYPES) else ()
        names = dict.fromkeys("a number" if a in numbers else _type_name(a) for a in args)
        return " | ".join(names)
    if hint in _ARRAY_TYPES:
        return "a number"
    if typing.get_origin(hint) is collections.abc.Callable or hint is collections.abc.Callable:
        return "a _target_ section"
    if hint is type(None):
        return "None"
    return re.sub(
        r"\b(typing|collections\.abc)\.", "", getattr(hint, "__name__", None) or str(hint)
    )


def _parameter_hints(target: Any) -> dict[str, Any]:
    """Each parameter's annotation, resolved on its own by `typing.get_type_hints` in the
    target's module: one naming what its module imports only for type checkers (optax's
    `ArrayTree`) leaves only that parameter unchecked, where one `get_type_hints` call on the
    whole target would give up on all of them."""
    function = target.__init__ if inspect.isclass(target) else target
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    hints = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.annotation is parameter.empty:
            continue
        one = types.SimpleNamespace(__annotations__={name: parameter.annotation})
        try:
            hints.update(typing.get_type_hints(one, globalns=namespace))
        except Exception:  # a name only type checkers import: this parameter stays unchecked
            continue
    return hints


def _check_values(node: Any, key: str, target: Any) -> None:
    """Checks a `_target_` section's values against the target's annotations, and that sizes
    and counts (by parameter name) are at least 1, before the target is called."""
    try:
        values = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        )
    except Exception:  # unresolvable interpolations: the call itself reports
        return
    hints = _parameter_hints(target)
    params = inspect.signature(target).parameters
    for arg, value in values.items():
        hint = hints.get(arg)
        if arg.startswith("_") or hint is None or _is_target(value):
            continue
        default = params[arg].default if arg in params else inspect.Parameter.empty
        example = default if default not in (inspect.Parameter.empty, None) else "..."
        if not _fits(value, hint):
            raise ConfigError(
                ARG_TYPE_MSG.format(
                    key=key, arg=arg, value=value, target=node["_target_"],
                    expected=_type_name(hint), example=example,
                )
            )  # fmt: skip
        if _SIZE_PARAMETER.search(arg) and isinstance(value, int) and value < 1:
            raise ConfigError(ARG_SIZE_MSG.format(key=key, arg=arg, value=value, example=example))


def locate(target: str, key: str) -> Any:
    """Imports `package.module.name` (the current directory is importable, for user code).

    Example:
        >>> locate("paxtrain.data.CharCorpus", "data").__name__
        'CharCorpus'
    """
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as error:
        raise ConfigError(BAD_TARGET_MSG.format(key=key, target=target, reason=error)) from None
    try:
        return getattr(module, attr)
    except AttributeError as error:
        names = [f"{module_name}.{n}" for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(target, names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        message = BAD_TARGET_MSG.format(key=key, target=target, reason=error)
        raise ConfigError(message + hint) from None


def check_target(node: Any, key: str, provided: tuple[str, ...] | None = ()) -> None:
    """Checks that a `_target_` section's keys match the target's parameters.

    `provided` names parameters the caller will pass itself (e.g. `vocab_size` from the data);
    None skips the check for missing required parameters, when those are not known yet, as
    does `_partial_: true` (the rest is passed later). Nested `_target_` sections, which
    `hydra.utils.instantiate` builds first, are checked the same way.

    Example:
        >>> check_target({"_target_": "paxtrain.data.CharCorpus", "seq_len": 8}, "data")
        >>> check_target({"_target_": "optax.chain", "_args_": [{"_target_": "optax.sgd"}]}, "opt")
        Traceback (most recent call last):
        paxtrain.errors.ConfigError: `opt._args_[0]` is missing required parameter(s) ['learning_rate'] of optax.sgd.
    """
    if node is None:
        raise ConfigError(NO_TARGET_MSG.format(key=key))
    if not isinstance(node, (DictConfig, dict)) or "_target_" not in node:
        raise ConfigError(NO_TARGET_MSG.format(key=key))
    target = locate(str(node["_target_"]), key)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without one (`collections.OrderedDict`): the
        return  # call itself checks its arguments
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    given = [k for k in node if not str(k).startswith("_")]
    if not takes_kwargs:
        for arg in given:
            if arg not in params:
                raise ConfigError(
                    UNKNOWN_ARG_MSG.format(
                        key=key, arg=arg, target=node["_target_"], hint=_hint(arg, names)
                    )
                )
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and n not in given
        and n not in (provided or ())
    ]
    if required and provided is not None and not node.get("_partial_", False):
        raise ConfigError(MISSING_ARG_MSG.format(key=key, args=required, target=node["_target_"]))
    _check_values(node, key, target)
    for arg, value in node.items():
        if _is_target(value):
            check_target(value, f"{key}.{arg}")
        elif isinstance(value, (ListConfig, list)):
            for i, item in enumerate(value):
                if _is_target(item):
                    check_target(item, f"{key}.{arg}[{i}]")


def _is_target(node: Any) -> bool:
    return isinstance(node, (DictConfig, dict)) and "_target_" in node
