"""`TrainState`: everything a training step reads and writes, as one module.

Each step option keeps its own state in `TrainState.extras`, an `OptionStates` mapping from the
option's name to its state (a NamedTuple for the built-in ones: `RollbackState`...). Only the
option's module reads it, and offers functions for everyone else (`nonfinite.data_position`,
`precision.loss_scale`, `options.ema_model`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

import paxtrain as pax
from paxtrain.optim import Optimizer

SHARED_PATH_MSG = """\
Step options {first!r} and {second!r} both keep state at `extras.{path}`: a checkpoint path \
names one array. Rename a field of one option's state (or the option, for a state that is not \
a NamedTuple)."""


def _fields(state: Any) -> tuple[str, ...] | None:
    """The field names of a NamedTuple state; None for any other pytree."""
    return getattr(state, "_fields", None) if isinstance(state, tuple) else None


class OptionStates(Mapping[str, Any]):
    """The states of a step's options, by option name; a pytree.

    A NamedTuple state keeps its fields directly under `extras` (`extras.data_offset`), any
    other state under the option's name (`extras.calls`): the paths checkpoints have always
    had, so one written before options had typed states restores unchanged. Field names are
    therefore unique across the options of a step. Options come in the order of their names.

    Example:
        >>> from typing import NamedTuple
        >>> class Calls(NamedTuple):
        ...     calls: jax.Array
        >>> states = OptionStates({"counter": Calls(jnp.array(0))})
        >>> [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(states)]
        ["['calls']"]
        >>> int(states["counter"].calls)
        0
    """

    def __init__(self, states: Mapping[str, Any] | None = None):
        # Sorted, as JAX sorts a dict's keys: the structure does not depend on the order the
        # options' states were added in (a fresh state and a restored one compile once).
        self._states = dict(sorted((states or {}).items()))
        self._flat: tuple[tuple, tuple] | None = None
        owners: dict[str, str] = {}
        for name, state in self._states.items():
            fields = _fields(state)
            for path in (name,) if fields is None else fields:
                if path in owners:
                    raise ValueError(
                        SHARED_PATH_MSG.format(first=owners[path], second=name, path=path)
                    )
                owners[path] = name

    def __getitem__(self, name: str) -> Any:
        return self._states[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return f"OptionStates({self._states!r})"

    def set(self, **states: Any) -> OptionStates:
        """A copy with some options' states set.

        Example:
            >>> OptionStates().set(calls=jnp.array(1))["calls"]
            Array(1, dtype=int32, weak_type=True)
        """
        return OptionStates({**self._states, **states})


def _layout(states: Mapping[str, Any]) -> tuple[tuple, tuple]:
    """`(children, layout)`: the states' leaves-to-be, and per option `(name, NamedTuple class or
    None, number of children)`, the static part JAX compares on every jitted call."""
    children, layout = [], []
    for name, state in states.items():
        fields = _fields(state)
        children.extend((state,) if fields is None else state)
        layout.append((name, None, 1) if fields is None else (name, type(state), len(fields)))
    return tuple(children), tuple(layout)


# Computed once per instance (they are immutable), as `pax.Module` caches its flat form: JAX
# flattens the state on every call of a jitted step.
def _flatten(states: OptionStates) -> tuple[tuple, tuple]:
    if states._flat is None:
        states._flat = _layout(states._states)
    return states._flat


def _flatten_with_keys(states: OptionStates) -> tuple[list, tuple]:
    children, layout = _flatten(states)
    keys = []
    for name, cls, _ in layout:
        keys.extend([name] if cls is None else cls._fields)
    return [(jax.tree_util.DictKey(k), c) for k, c in zip(keys, children)], layout


def _unflatten(layout: tuple, children: Any) -> OptionStates:
    children, states, start = tuple(children), {}, 0
    for name, cls, count in layout:
        states[name] = (
            children[start] if cls is None else cls._make(children[start : start + count])
        )
        start += count
    new = object.__new__(OptionStates)
    # Not checked again: the layout is that of a checked instance.
    new._states, new._flat = states, (children, layout)
    return new


jax.tree_util.register_pytree_with_keys(
    OptionStates, _flatten_with_keys, _unflatten, flatten_func=_flatten
)


class TrainState(pax.Module):
    """The model, its optimizer, a training RNG, the step count, and the states of step options.

    `step` (int32) counts train-step calls, skipped non-finite steps included; the optimizer's
    own count, which drives learning-rate schedules, counts applied updates only. `extras`
    holds each step option's state under the option's name (see `OptionStates`).

    Example:
        >>> state = TrainState.create(model, optax.adam(1e-3), seed=0)  # doctest: +SKIP
        >>> int(state.step)  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        model: pax.Module,
        optimizer: Optimizer,
        rng: pax.RngSeq,
        step: Any = 0,
        extras: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.rng = rng
        self.register_state("step", jnp.asarray(step, jnp.int32))
        self.register_state("extras", OptionStates(extras))

    @classmethod
    def create(
        cls, model: pax.Module, optimizer: Optimizer | optax.GradientTransformation, seed: int = 0
    ) -> TrainState:
        """A state at step 0; an optax transformation is wrapped in an `Optimizer`.

        Example:
            >>> state = TrainState.create(model, optax.sgd(0.1))  # doctest: +SKIP
        """
        if not isinstance(optimizer, Optimizer):
            optimizer = Optimizer(model, optimizer)
        return cls(model, optimizer, pax.RngSeq(seed=seed))

    def with_extras(self, **states: Any) -> TrainState:
        """A copy with the states of some options set, by option name.

        Example:
            >>> state = state.with_extras(calls=jnp.array(0))  # doctest: +SKIP
        """
        return self.replace(extras=self.extras.set(**states))
