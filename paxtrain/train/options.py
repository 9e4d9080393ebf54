"""Composable train-step options: each wraps a step function and keeps its own typed state.

A `StepOption` is a name, its state (a NamedTuple such as `EmaState`, kept in
`TrainState.extras` under the option's name and read by the option's module only) and up to
three wrappers. `wrap(step) -> step` wraps the whole step (loss, gradients and update);
`wrap_update(update) -> update` wraps only the part that applies the gradients, an `UpdateFn`;
`wrap_grad(differentiate) -> differentiate` wraps how the loss is differentiated (the loss
scale, see `paxtrain.train.precision`). The non-finite guard keeps or skips the update as a
whole (under `lax.cond`, or a select on GPUs, see `paxtrain.train.nonfinite`), so what the
options inside it do (the EMA, the rollback scale) is skipped with it.
`make_train_step` applies its options from the inside out; an option sees every state change
made by the options inside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.train.gradients import Batch, Differentiate, Metrics
from paxtrain.train.state import TrainState

StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
# (input state, model after the forward pass, gradients, metrics) -> state after the update.
UpdateFn = Callable[[TrainState, pax.Module, Any, Metrics], TrainState]


def _identity(fn: Callable) -> Callable:
    return fn


@dataclasses.dataclass(frozen=True)
class StepOption:
    """A composable step feature: the state it keeps and how it wraps the step.

    Args:
      name: a unique name (two options of one step may not share it); the option's state is
        `state.extras[name]`.
      init: `init(state) -> option state`, a pytree of arrays (a NamedTuple keeps its fields
        at `extras.<field>` in checkpoints, see `OptionStates`), added on the first call.
      wrap: `wrap(step) -> step`, the whole step with the feature.
      wrap_update: `wrap_update(update) -> update`, the update part with the feature: an
        `UpdateFn` `update(state, model, grads, metrics) -> state` applies `grads` to `model`
        (the model after the forward pass) and returns the new state.
      wrap_grad: `wrap_grad(differentiate) -> differentiate`, how the loss is differentiated
        (see `paxtrain.train.gradients.Differentiate`).

    Example:
        >>> def count_calls(step):
        ...     def counted(state, batch):
        ...         state, metrics = step(state, batch)
        ...         return state.with_extras(calls=state.extras["calls"] + 1), metrics
        ...     return counted
        >>> option = StepOption("calls", lambda state: jnp.array(0), count_calls)
    """

    name: str
    init: Callable[[TrainState], Any]
    wrap: Callable[[StepFn], StepFn] = _identity
    wrap_update: Callable[[UpdateFn], UpdateFn] = _identity
    wrap_grad: Callable[[Differentiate], Differentiate] = _identity


def apply_gradients(
    state: TrainState, model: pax.Module, grads: Any, metrics: Metrics
) -> TrainState:
    """The plain `UpdateFn`: one optimizer step on `model`.

    Example:
        >>> new = apply_gradients(state, model, grads, metrics)  # doctest: +SKIP
    """
    model, optimizer = state.optimizer.step(grads, model)
    return state.replace(model=model, optimizer=optimizer)


EMA_DECAY_MSG = "ema_decay is {decay}; it must be in [0, 1), e.g. 0.999."


class EmaState(NamedTuple):
    """The state of `ema_of_parameters`: the average, a tree of the model's parameters."""

    ema: Any


EMA = "ema"
NO_EMA_MSG = """\
This state keeps no EMA of the parameters: build the step with `make_train_step(..., ema_decay=0.999)`
and call it at least once."""


def ema_of_parameters(decay: float) -> StepOption:
    """Keeps `ema = decay * ema + (1 - decay) * params` after every step (an `EmaState`).

    The EMA starts at the parameters of the first step's input state. `ema_model(state)` is the
    model with the EMA parameters; `make_eval_step(eval_fn, use_ema=True)` evaluates it.

    Args:
      decay: the weight of the old average.

    Example:
        >>> step = make_train_step(loss_fn, ema_decay=0.999)  # doctest: +SKIP
        >>> model = ema_model(state)                              # doctest: +SKIP
    """
    if not 0 <= decay < 1:  # 1 never moves; above it, or below 0, the average diverges
        raise ValueError(EMA_DECAY_MSG.format(decay=decay))

    def wrap_update(update: UpdateFn) -> UpdateFn:
        def with_ema(state: TrainState, model: pax.Module, grads: Any, metrics: Metrics):
            new = update(state, model, grads, metrics)
            ema = jax.tree_util.tree_map(
                lambda e, p: decay * e + (1.0 - decay) * p,
                state.extras[EMA].ema,
                pax.select_parameters(new.model),
            )
            return new.with_extras(**{EMA: EmaState(ema)})

        return with_ema

    def init(state: TrainState) -> EmaState:
        # A copy: sharing buffers with the model would donate them twice.
        return EmaState(jax.tree_util.tree_map(jnp.copy, pax.select_parameters(state.model)))

    return StepOption(EMA, init, wrap_update=wrap_update)


def ema_parameters(state: TrainState) -> Any:
    """The EMA of the parameters that `state` keeps; None without the `ema_decay` option.

    Example:
        >>> ema_parameters(TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1))) is None
        True
    """
    return state.extras[EMA].ema if EMA in state.extras else None


def ema_model(state: TrainState) -> pax.Module:
    """The model with its EMA parameters (requires the `ema_decay` step option).

    Example:
        >>> ema_model(TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1)))
        Traceback (most recent call last):
        ...
        KeyError: ...
    """
    params = ema_parameters(state)
    if params is None:
        raise KeyError(NO_EMA_MSG)
    return pax.update_parameters(state.model, params)
