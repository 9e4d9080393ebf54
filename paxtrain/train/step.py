"""The jitted training step, built from a loss function and composable options.

`make_train_step(loss_fn, ...)` composes, inside one `jax.jit` with the state donated:

    steps_per_call scan( ema( dynamic_loss_scale( skip_nonfinite( update( grads ))))))

where `grads` may accumulate over micro-batches. Each option is a `StepOption`: the extras it
keeps in `TrainState.extras` and a wrapper around the inner step function. Options of your own
compose the same way: `make_train_step(loss_fn, options=[my_option])`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import paxtrain as pax
from paxtrain.train.state import TrainState

Batch = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
# (state, batch, key or None) -> (loss, new model, metrics, grads).
GradFn = Callable[[TrainState, Batch, jax.Array | None], tuple[jax.Array, pax.Module, Metrics, Any]]

ACCUM_SPLIT_MSG = """\
grad_accum_steps={k} does not divide the batch's leading dimension {n} (at {path}).
Use a batch size that is a multiple of grad_accum_steps."""

LOSS_FN_MSG = """\
loss_fn must return (loss, (model, metrics)); got {got}.
Return the model too, as `pax.module_and_value` gives it: it carries updated states."""


def takes_key(loss_fn: Callable) -> bool:
    """Whether `loss_fn` wants a PRNG key (has a `key` parameter)."""
    return "key" in inspect.signature(loss_fn).parameters


def _call_loss(loss_fn: Callable) -> Callable[[pax.Module, Batch, jax.Array | None], Any]:
    """`loss_fn(model, batch)`, or `loss_fn(model, batch, key)` when it takes a `key`."""
    with_key = takes_key(loss_fn)

    def call(model: pax.Module, batch: Batch, key: jax.Array | None):
        out = loss_fn(model, batch, key=key) if with_key else loss_fn(model, batch)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple)):
            raise TypeError(LOSS_FN_MSG.format(got=type(out).__name__))
        return out

    return call


def loss_and_grads(loss_fn: Callable) -> GradFn:
    """Gradients of `loss_fn` w.r.t. the model's trainable parameters.

    Multiplies the loss by `state.extras["loss_scale"]` when present (dynamic loss scaling) and
    divides the gradients by it, so options compose without knowing each other's internals.

    Example:
        >>> loss, model, metrics, grads = loss_and_grads(loss_fn)(state, batch, key)  # doctest: +SKIP
    """
    call = _call_loss(loss_fn)

    def grad_fn(state: TrainState, batch: Batch, key: jax.Array | None):
        scale = state.extras.get("loss_scale")

        def scaled(model):
            loss, (model, metrics) = call(model, batch, key)
            return (loss if scale is None else loss * scale), (loss, model, metrics)

        (_, (loss, model, metrics)), grads = pax.value_and_grad(scaled, has_aux=True)(state.model)
        if scale is not None:
            grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
        return loss, model, metrics, grads

    return grad_fn


def accumulate_gradients(grad_fn: GradFn, steps: int) -> GradFn:
    """Splits the batch into `steps` micro-batches, scans `grad_fn` over them, averages.

    The model is threaded through the micro-batches, so states (BatchNorm statistics) see them
    in order. With a mean loss and equal micro-batches, the result equals the full batch's.

    Example:
        >>> grad_fn = accumulate_gradients(loss_and_grads(loss_fn), 4)  # doctest: +SKIP
    """

    def split(path, x):
        if x.shape[0] % steps:
            raise ValueError(
                ACCUM_SPLIT_MSG.format(k=steps, n=x.shape[0], path=jax.tree_util.keystr(path))
            )
        return x.reshape(steps, x.shape[0] // steps, *x.shape[1:])

    def accumulated(state: TrainState, batch: Batch, key: jax.Array | None):
        micro = jax.tree_util.tree_map_with_path(split, batch)

        def body(carry, inputs):
            model, totals = carry
            micro_batch, micro_key = inputs
            loss, model, metrics, grads = grad_fn(
                state.replace(model=model), micro_batch, micro_key
            )
            totals = jax.tree_util.tree_map(jnp.add, totals, (loss, metrics, grads))
            return (model, totals), None

        zeros = jax.tree_util.tree_map(
            lambda s: jnp.zeros(s.shape, s.dtype),
            jax.eval_shape(lambda: grad_fn(state, _first(micro), key)),
        )
        init = (state.model, (zeros[0], zeros[2], zeros[3]))
        keys = None if key is None else jax.random.split(key, steps)
        (model, totals), _ = jax.lax.scan(body, init, (micro, keys))
        loss, metrics, grads = jax.tree_util.tree_map(lambda t: t / steps, totals)
        return loss, model, metrics, grads

    return accumulated


def _first(stacked: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x[0], stacked)


def update_step(grad_fn: GradFn, with_key: bool = False) -> StepFn:
    """One optimizer step: gradients, update, metrics (loss, grad_norm, learning_rate).

    With `with_key`, a key split from `state.rng` is passed to `grad_fn`; otherwise None, and
    no RNG work is compiled into the step.

    Example:
        >>> state, metrics = update_step(loss_and_grads(loss_fn))(state, batch)  # doctest: +SKIP
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng, key = pax.purecall(state.rng.next_rng_key) if with_key else (state.rng, None)
        loss, model, metrics, grads = grad_fn(state, batch, key)
        model, optimizer = state.optimizer.step(grads, model)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        if optimizer.learning_rate is not None:
            metrics["learning_rate"] = optimizer.learning_rate
        new = state.replace(model=model, optimizer=optimizer, rng=rng, step=state.step + 1)
        return new, metrics

    return step


@dataclasses.dataclass(frozen=True)
class StepOption:
    """A composable step feature: the extras it keeps and how it wraps the step.

    Example:
        >>> option = StepOption("my_option", init=lambda state: {}, wrap=lambda step: step)
    """

    name: str
    init: Callable[[TrainState], dict[str, Any]]
    wrap: Callable[[StepFn], StepFn]


def _select(keep_new: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def skip_nonfinite() -> StepOption:
    """Steps whose loss or gradient norm is NaN/Inf leave the model and optimizer unchanged.

    The decision is made on device (no host sync); skipped steps are counted in
    `extras["skipped_steps"]` and reported as the metric `skipped_steps`.

    Example:
        >>> step = make_train_step(loss_fn, options=[skip_nonfinite()])  # doctest: +SKIP
    """

    def wrap(step: StepFn) -> StepFn:
        def guarded(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            kept = _select(finite, new.replace(extras=state.extras), state)
            skipped = state.extras["skipped_steps"] + (~finite).astype(jnp.int32)
            kept = kept.replace(
                step=new.step, rng=new.rng, extras={**new.extras, "skipped_steps": skipped}
            )
            return kept, {**metrics, "skipped_steps": skipped}

        return guarded

    return StepOption(
        "skip_nonfinite", lambda state: {"skipped_steps": jnp.array(0, jnp.int32)}, wrap
    )


def dynamic_loss_scale(
    initial: float = 2.0**15, period: int = 2000, factor: float = 2.0
) -> StepOption:
    """Dynamic loss scaling for float16: halve the scale on a non-finite step (which is skipped),
    multiply it by `factor` after `period` finite steps in a row.

    Requires `skip_nonfinite` inside it (`make_train_step(loss_scale="dynamic")` adds both).

    Example:
        >>> step = make_train_step(loss_fn, loss_scale="dynamic")  # doctest: +SKIP
    """

    def init(state: TrainState) -> dict[str, Any]:
        return {
            "loss_scale": jnp.array(initial, jnp.float32),
            "good_steps": jnp.array(0, jnp.int32),
        }

    def wrap(step: StepFn) -> StepFn:
        def scaled(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
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


def ema_of_parameters(decay: float) -> StepOption:
    """Keeps `extras["ema"] = decay * ema + (1 - decay) * params` after every step.

    Example:
        >>> step = make_train_step(loss_fn, ema_decay=0.999)  # doctest: +SKIP
        >>> ema_model = state.ema_model                          # doctest: +SKIP
    """

    def wrap(step: StepFn) -> StepFn:
        def with_ema(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            ema = jax.tree_util.tree_map(
                lambda e, p: decay * e + (1.0 - decay) * p,
                state.extras["ema"],
                pax.select_parameters(new.model),
            )
            return new.with_extras(ema=ema), metrics

        return with_ema

    def init(state: TrainState) -> dict[str, Any]:
        # A copy: sharing buffers with the model would donate them twice.
        return {"ema": jax.tree_util.tree_map(jnp.copy, pax.select_parameters(state.model))}

    return StepOption("ema", init, wrap)


def scan_steps(step: StepFn, steps: int) -> StepFn:
    """Runs `steps` steps in one call with `lax.scan` over batches stacked on a leading axis.

    Metrics come back stacked, on device.

    Example:
        >>> state, metrics = scan_steps(step, 10)(state, stacked_batches)  # doctest: +SKIP
    """

    def scanned(state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
        return jax.lax.scan(step, state, batches, length=steps)

    return scanned


class TrainStep:
    """A jitted `train_step(state, batch) -> (state, metrics)`; see `make_train_step`.

    Missing extras of its options are added to the state on the first call.
    """

    def __init__(self, step: StepFn, options: Sequence[StepOption], donate: bool):
        self.options = tuple(options)
        self._jitted = jax.jit(step, donate_argnums=(0,) if donate else ())
        self._required: frozenset[str] | None = None

    def init(self, state: TrainState) -> TrainState:
        """`state` with the extras of every option that it lacks."""
        extras = {}
        for option in self.options:
            extras.update({k: v for k, v in option.init(state).items() if k not in state.extras})
        return state.with_extras(**extras) if extras else state

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        if self._required is None or not self._required <= state.extras.keys():
            state = self.init(state)
            self._required = frozenset(state.extras)
        return self._jitted(state, batch)


def make_train_step(
    loss_fn: Callable,
    *,
    grad_accum_steps: int = 1,
    steps_per_call: int = 1,
    nonfinite_guard: bool = True,
    ema_decay: float | None = None,
    loss_scale: str | None = None,
    options: Sequence[StepOption] = (),
    donate: bool = True,
) -> TrainStep:
    """Builds the jitted training step.

    Args:
      loss_fn: `loss_fn(model, batch[, key]) -> (loss, (model, metrics))`; it may update the
        model's states through `pax.module_and_value`. With a `key` parameter it receives a
        fresh PRNG key each step.
      grad_accum_steps: micro-batches per step (the batch's leading axis is split).
      steps_per_call: steps per call; the batch then has a leading axis of that size.
      nonfinite_guard: skip and count steps with a non-finite loss or gradient.
      ema_decay: keep an EMA of the parameters (`state.ema_model`).
      loss_scale: "dynamic" for float16 training; None otherwise.
      options: more `StepOption`s, applied innermost first after the built-in ones.
      donate: donate the state's buffers to the step.

    Example:
        >>> def loss_fn(model, batch):
        ...     model, logits = pax.purecall(model, batch["x"])
        ...     loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        ...     return loss, (model, {})
        >>> train_step = make_train_step(loss_fn, grad_accum_steps=2)  # doctest: +SKIP
        >>> state, metrics = train_step(state, batch)                   # doctest: +SKIP
    """
    grad_fn = loss_and_grads(loss_fn)
    if grad_accum_steps > 1:
        grad_fn = accumulate_gradients(grad_fn, grad_accum_steps)
    chosen = []
    if nonfinite_guard or loss_scale == "dynamic":
        chosen.append(skip_nonfinite())
    if loss_scale == "dynamic":
        chosen.append(dynamic_loss_scale())
    elif loss_scale is not None:
        raise ValueError(f"loss_scale must be 'dynamic' or None, got {loss_scale!r}")
    if ema_decay is not None:
        chosen.append(ema_of_parameters(ema_decay))
    chosen.extend(options)
    step = update_step(grad_fn, with_key=takes_key(loss_fn))
    for option in chosen:
        step = option.wrap(step)
    if steps_per_call > 1:
        step = scan_steps(step, steps_per_call)
    return TrainStep(step, chosen, donate)


def make_eval_step(
    eval_fn: Callable, use_ema: bool = False
) -> Callable[[TrainState, Batch], Metrics]:
    """A jitted `eval_step(state, batch) -> metrics` running the model in eval mode.

    Args:
      eval_fn: `eval_fn(model, batch) -> metrics`; state changes it makes are dropped.
      use_ema: evaluate the EMA parameters.

    Example:
        >>> eval_step = make_eval_step(lambda model, batch: {"loss": ...})  # doctest: +SKIP
    """

    @jax.jit
    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        model = state.ema_model if use_ema else state.model
        return eval_fn(model.eval(), batch)

    return eval_step
