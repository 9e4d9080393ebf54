"""Composable train-step options: each wraps a step function and keeps its own extras.

A `StepOption` is a name, the extras it adds to `TrainState.extras` (an EMA, a loss scale, a
counter) and up to two wrappers. `wrap(step) -> step` wraps the whole step (loss, gradients and
update); `wrap_update(update) -> update` wraps only the part that applies the gradients, an
`UpdateFn`. The non-finite guard keeps or skips that part as a whole (under `lax.cond`, or a
select on GPUs, see `skip_nonfinite`), so what the options inside it do (the EMA, the rollback
scale) is skipped with it.
`make_train_step` applies its options from the inside out; an option sees every state change
made by the options inside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.train.gradients import Batch, Metrics
from paxtrain.train.state import TrainState

StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
# (input state, model after the forward pass, gradients, metrics) -> state after the update.
UpdateFn = Callable[[TrainState, pax.Module, Any, Metrics], TrainState]


def _identity(fn: Callable) -> Callable:
    return fn


@dataclasses.dataclass(frozen=True)
class StepOption:
    """A composable step feature: the extras it keeps and how it wraps the step.

    Args:
      name: a unique name (two options of one step may not share it).
      init: `init(state) -> dict` of the extras the option needs, added on the first call.
      wrap: `wrap(step) -> step`, the whole step with the feature.
      wrap_update: `wrap_update(update) -> update`, the update part with the feature: an
        `UpdateFn` `update(state, model, grads, metrics) -> state` applies `grads` to `model`
        (the model after the forward pass) and returns the new state.

    Example:
        >>> def count_calls(step):
        ...     def counted(state, batch):
        ...         state, metrics = step(state, batch)
        ...         return state.with_extras(calls=state.extras["calls"] + 1), metrics
        ...     return counted
        >>> option = StepOption("calls", lambda state: {"calls": jnp.array(0)}, count_calls)
    """

    name: str
    init: Callable[[TrainState], dict[str, Any]]
    wrap: Callable[[StepFn], StepFn] = _identity
    wrap_update: Callable[[UpdateFn], UpdateFn] = _identity


def apply_gradients(
    state: TrainState, model: pax.Module, grads: Any, metrics: Metrics
) -> TrainState:
    """The plain `UpdateFn`: one optimizer step on `model`.

    Example:
        >>> new = apply_gradients(state, model, grads, metrics)  # doctest: +SKIP
    """
    model, optimizer = state.optimizer.step(grads, model)
    return state.replace(model=model, optimizer=optimizer)


def _finite(metrics: Metrics) -> jax.Array:
    """Whether the loss and the gradients of a step are finite (all of them, from their norm)."""
    return jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])


def guard_by_select() -> bool:
    """Whether the non-finite guard selects (`jnp.where`) rather than branches (`lax.cond`) on
    the default backend: on GPUs.

    XLA's GPU runtime reads a conditional's predicate back to the host and waits for it (its
    `ConditionalThunk` copies it from the device, then blocks until the stream is done), so a
    branch stalls the launch of the rest of the step every step; there a select fuses into the
    optimizer's elementwise update. XLA:CPU fuses that select less well (it copies the
    optimizer's moments: 1.46x raw JAX's bytes accessed for a small MLP, against 1.03x with the
    branch), and TPUs branch on the device.

    Example:
        >>> guard_by_select()  # on a CPU
        False
    """
    return jax.default_backend() == "gpu"


def skip_nonfinite(select: bool | None = None) -> StepOption:
    """Steps whose loss or gradient norm is NaN/Inf leave the state as it was.

    On such a step the model (its states included), the optimizer and the extras of the options
    inside this one (e.g. the EMA) are kept; only `state.step` and `state.rng` advance. A finite
    step does the unguarded step's work plus the gradient norm (computed once, shared with the
    `grad_norm` metric). Skipped steps are counted in `extras["skipped_steps"]`, also reported as
    the metric `skipped_steps`.

    Args:
      select: True keeps the updated or the old state with `jnp.where` after the update; False
        runs the update under `lax.cond`. Same results; None (the default) chooses per backend
        (`guard_by_select`: a select on GPUs, the branch elsewhere). `benchmarks/train_step.py`
        measures both.

    Example:
        >>> step = make_train_step(loss_fn, nonfinite_guard=True)  # doctest: +SKIP
        >>> step = make_train_step(loss_fn, nonfinite_guard=False,  # doctest: +SKIP
        ...                        options=[skip_nonfinite(select=True)])
    """

    def wrap_update(update: UpdateFn) -> UpdateFn:
        def guarded(state: TrainState, model: pax.Module, grads: Any, metrics: Metrics):
            def skip() -> TrainState:
                skipped = state.extras["skipped_steps"] + 1
                return state.with_extras(skipped_steps=skipped)

            finite = _finite(metrics)
            if guard_by_select() if select is None else select:
                kept = jax.tree_util.tree_map(
                    lambda new, old: jnp.where(finite, new, old),
                    update(state, model, grads, metrics),
                    skip(),
                )
                return kept
            return jax.lax.cond(finite, lambda: update(state, model, grads, metrics), skip)

        return guarded

    def wrap(step: StepFn) -> StepFn:
        def reported(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            return new, {**metrics, "skipped_steps": new.extras["skipped_steps"]}

        return reported

    return StepOption(
        "skip_nonfinite",
        lambda state: {"skipped_steps": jnp.array(0, jnp.int32)},
        wrap,
        wrap_update,
    )


def dynamic_loss_scale(
    initial: float = 2.0**15, period: int = 2000, factor: float = 2.0
) -> StepOption:
    """Dynamic loss scaling for float16 compute.

    The loss is multiplied by `extras["loss_scale"]` before differentiation (see
    `loss_and_grads`). A non-finite step divides the scale by `factor` (not below 1); `period`
    finite steps in a row multiply it by `factor`. It must wrap `skip_nonfinite`, so the
    overflowing step is also skipped: `make_train_step(loss_scale=...)` arranges both.

    Args:
      initial: the starting scale.
      period: finite steps in a row before the scale grows.
      factor: the growth and shrink factor.

    Example:
        >>> step = make_train_step(loss_fn, loss_scale="dynamic")  # doctest: +SKIP
        >>> step = make_train_step(loss_fn, loss_scale=dynamic_loss_scale(period=500))  # doctest: +SKIP
    """

    def init(state: TrainState) -> dict[str, Any]:
        return {
            "loss_scale": jnp.array(initial, jnp.float32),
            "good_steps": jnp.array(0, jnp.int32),
        }

    def wrap(step: StepFn) -> StepFn:
        def scaled(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            finite = _finite(metrics)
            scale, good = state.extras["loss_scale"], state.extras["good_steps"] + 1
            grow = finite & (good >= period)
            scale = jnp.where(
                finite, jnp.where(grow, scale * factor, scale), jnp.maximum(scale / factor, 1.0)
            )
            good = jnp.where(finite & ~grow, good, 0)
            new = new.with_extras(loss_scale=scale, good_steps=good)
            return new, {**metrics, "loss_scale": scale}

        return scaled

    return StepOption("dynamic_loss_scale", init, wrap)


EMA_DECAY_MSG = "ema_decay is {decay}; it must be in [0, 1), e.g. 0.999."


def ema_of_parameters(decay: float) -> StepOption:
    """Keeps `extras["ema"] = decay * ema + (1 - decay) * params` after every step.

    The EMA starts at the parameters of the first step's input state. `state.ema_model` is the
    model with the EMA parameters; `make_eval_step(eval_fn, use_ema=True)` evaluates it.

    Args:
      decay: the weight of the old average.

    Example:
        >>> step = make_train_step(loss_fn, ema_decay=0.999)  # doctest: +SKIP
        >>> ema_model = state.ema_model                          # doctest: +SKIP
    """
    if not 0 <= decay < 1:  # 1 never moves; above it, or below 0, the average diverges
        raise ValueError(EMA_DECAY_MSG.format(decay=decay))

    def wrap_update(update: UpdateFn) -> UpdateFn:
        def with_ema(state: TrainState, model: pax.Module, grads: Any, metrics: Metrics):
            new = update(state, model, grads, metrics)
            ema = jax.tree_util.tree_map(
                lambda e, p: decay * e + (1.0 - decay) * p,
                state.extras["ema"],
                pax.select_parameters(new.model),
            )
            return new.with_extras(ema=ema)

        return with_ema

    def init(state: TrainState) -> dict[str, Any]:
        # A copy: sharing buffers with the model would donate them twice.
        return {"ema": jax.tree_util.tree_map(jnp.copy, pax.select_parameters(state.model))}

    return StepOption("ema", init, wrap_update=wrap_update)


def rollback_support() -> StepOption:
    """Keeps what a rollback after non-finite steps changes: `extras["update_scale"]`, a factor
    on every parameter update (lowering it lowers the learning rate of any optimizer whose last
    transformation scales by the learning rate), and `extras["data_offset"]`, how many batches
    of the stream were skipped, which the trainer adds to the step to pick batches. The
    reported `learning_rate` is the optimizer's times the scale: the rate of the update made.

    Example:
        >>> step = make_train_step(loss_fn, options=[rollback_support()])  # doctest: +SKIP
    """

    def wrap_update(update: UpdateFn) -> UpdateFn:
        def scaled(state: TrainState, model: pax.Module, grads: Any, metrics: Metrics):
            new = update(state, model, grads, metrics)
            scale = state.extras["update_scale"]

            def scale_update(old: jax.Array, updated: jax.Array) -> jax.Array:
                # At scale 1 the update itself: `old + 1 * (updated - old)` rounds otherwise, so
                # turning rollbacks on would change every run, one that never rolls back too.
                # In the parameters' dtype (the float32 scale would promote bfloat16 ones).
                scaled = (old + scale * (updated - old)).astype(updated.dtype)
                return jnp.where(scale == 1, updated, scaled)

            params = jax.tree_util.tree_map(
                scale_update, pax.select_parameters(state.model), pax.select_parameters(new.model)
            )
            return new.replace(model=pax.update_parameters(new.model, params))

        return scaled

    def wrap(step: StepFn) -> StepFn:
        def reported(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            if "learning_rate" in metrics:  # the rate the update was made with
                rate = metrics["learning_rate"] * state.extras["update_scale"]
                metrics = {**metrics, "learning_rate": rate}
            return new, metrics

        return reported

    def init(state: TrainState) -> dict[str, Any]:
        return {
            "update_scale": jnp.array(1.0, jnp.float32),
            "data_offset": jnp.array(0, jnp.int32),
        }

    return StepOption("rollback", init, wrap, wrap_update)
