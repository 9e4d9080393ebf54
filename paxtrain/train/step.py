"""The jitted training step, built from a loss function and composable options.

`make_train_step(loss_fn, ...)` composes, inside one `jax.jit` with the state donated:

    scan_steps( options( dynamic_loss_scale( update_step( grad_fn,
        update=skip_nonfinite( ema( rollback( apply_gradients ))))))))

where `grad_fn` is `loss_and_grads(loss_fn)`, possibly wrapped by `accumulate_gradients`, and
each optional layer is a `StepOption` (see `paxtrain.train.options`): the guard, the EMA and the
rollback scale wrap the update (applying the gradients), the loss scale and options of your own
(`options=[...]`) the whole step. The guard keeps or skips the update as a whole (under
`lax.cond`; a select on GPUs), so a skipped non-finite step also leaves the EMA alone, while the
loss scale still reacts to it; the loss scale also wraps how the loss is differentiated
(`StepOption.wrap_grad`).

On several devices a parallel strategy (`paxtrain.parallel.setup`) compiles the step
(`compile_step`: `jax.jit` on a mesh, or `jax.pmap`) and may reduce the gradients inside it
(`reduce_gradients`: pmap's average over devices); its `step_kwargs` pass both.

Mixed precision is a property of the model, not of the step: build it with
`pax.apply_mp_policy(model, "params=float32,compute=bfloat16,output=float32")` before the
`TrainState`, and the step differentiates and updates the float32 parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

import paxtrain as pax
from paxtrain.train.gradients import (
    Batch,
    GradFn,
    Metrics,
    accumulate_gradients,
    loss_and_grads,
    takes_key,
    value_and_grad,
)
from paxtrain.train.nonfinite import rollback_support, skip_nonfinite
from paxtrain.train.options import (
    StepFn,
    StepOption,
    UpdateFn,
    apply_gradients,
    ema_model,
    ema_of_parameters,
)
from paxtrain.train.precision import LOSS_SCALE, dynamic_loss_scale
from paxtrain.train.state import TrainState

LOSS_SCALE_MSG = """\
loss_scale must be None, "dynamic" or a `dynamic_loss_scale(...)` option; got {got!r}."""

DUPLICATE_OPTION_MSG = """\
Two step options are named {name!r}; each keeps its state under its name, so they would collide.
Built-in options come from the flags: pass `ema_decay=...`, `nonfinite_guard=...` or
`loss_scale=...` instead of adding the same option to `options`."""


def update_step(
    grad_fn: GradFn,
    update: UpdateFn = apply_gradients,
    with_key: bool = False,
    grad_norm: bool = True,
) -> StepFn:
    """One optimizer step: gradients, update, metrics (loss, grad_norm, learning_rate).

    `grad_norm` (when asked for) is the global norm of the gradients before any clipping,
    computed once: the non-finite guard and the loss scale read it from the metrics.
    `learning_rate` is reported when the optimizer exposes it (see `Optimizer.learning_rate`).
    With `with_key`, a key split from `state.rng` is passed to `grad_fn`; otherwise None, and no
    RNG work is compiled into the step.

    Example:
        >>> state, metrics = update_step(loss_and_grads(loss_fn))(state, batch)  # doctest: +SKIP
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng, key = pax.purecall(state.rng.next_rng_key) if with_key else (state.rng, None)
        loss, model, metrics, grads = grad_fn(state, batch, key)
        metrics = {**metrics, "loss": loss}
        if grad_norm:
            metrics["grad_norm"] = optax.tree.norm(grads)
        new = update(state, model, grads, metrics)
        if new.optimizer.learning_rate is not None:
            metrics["learning_rate"] = new.optimizer.learning_rate
        return new.replace(rng=rng, step=state.step + 1), metrics

    return step


def scan_steps(step: StepFn, steps: int) -> StepFn:
    """Runs `steps` steps in one call with `lax.scan` over batches stacked on a leading axis.

    The result equals `steps` separate calls; metrics come back stacked, on device, so small
    models are not bound by the host's dispatch time.

    Example:
        >>> state, metrics = scan_steps(step, 10)(state, stacked_batches)  # doctest: +SKIP
    """

    def scanned(state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
        return jax.lax.scan(step, state, batches, length=steps)

    return scanned


FLAT_STRUCTURE_MSG = """\
The train step changed the structure of the state it was given (its modules, extras or dtypes):
{before}
became
{after}
A step must return a state of the structure it was given; add the options' states before
training (`train_step.init(state)`), not inside the step."""


class TrainStep:
    """A jitted `train_step(state, batch) -> (state, metrics)`; see `make_train_step`.

    The states of its options that the state lacks are added on the first call (or by `init`),
    outside `jit`. `flat(treedef)` is the same step on the state's leaves, for loops
    that keep the state flat: it skips rebuilding every module of the returned state in Python
    on each call, which is most of a small step's host time.

    Example:
        >>> state, metrics = make_train_step(loss_fn)(state, batch)  # doctest: +SKIP
    """

    def __init__(self, step: StepFn, options: Sequence[StepOption], compile_step: Callable):
        self.options = tuple(options)
        self._step = step
        self._compile = compile_step
        self._jitted = compile_step(step)
        self._flat: dict[Any, Callable] = {}
        self._required: frozenset[str] | None = None

    def init(self, state: TrainState) -> TrainState:
        """`state` with the state of every option that it lacks.

        Example:
            >>> state = train_step.init(state)  # doctest: +SKIP
        """
        missing = {o.name: o.init(state) for o in self.options if o.name not in state.extras}
        return state.with_extras(**missing) if missing else state

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        if self._required is None or not self._required <= state.extras.keys():
            state = self.init(state)
            self._required = frozenset(state.extras)
        return self._jitted(state, batch)

    def flat(
        self, treedef: jax.tree_util.PyTreeDef
    ) -> Callable[[list, Batch], tuple[list, Metrics]]:
        """`flat_step(leaves, batch) -> (leaves, metrics)` for states of structure `treedef`.

        The state goes in and comes out as its list of leaves (donated like the state), so no
        module is built on the host; the state must already have its options' states.

        Example:
            >>> leaves, treedef = jax.tree_util.tree_flatten(train_step.init(state))  # doctest: +SKIP
            >>> flat_step = train_step.flat(treedef)                                  # doctest: +SKIP
            >>> leaves, metrics = flat_step(leaves, batch)                            # doctest: +SKIP
        """
        if treedef not in self._flat:

            def flat_step(leaves: list, batch: Batch) -> tuple[list, Metrics]:
                new, metrics = self._step(jax.tree_util.tree_unflatten(treedef, leaves), batch)
                new_leaves, new_treedef = jax.tree_util.tree_flatten(new)
                if new_treedef != treedef:
                    raise ValueError(FLAT_STRUCTURE_MSG.format(before=treedef, after=new_treedef))
                return new_leaves, metrics

            self._flat[treedef] = self._compile(flat_step, flat_state=True)
        return self._flat[treedef]


def jit_compile(step: Callable, *, donate: bool = True, flat_state: bool = False) -> Callable:
    """`jax.jit` of `step(state, batch)`, its state donated with `donate`: the compile function
    of a step on one device, `make_train_step`'s default. A parallel strategy's `compile_step`
    takes the same arguments (`flat_state`: the state is its list of leaves, which plain
    `jax.jit` handles as any state).

    Example:
        >>> step = jit_compile(lambda state, batch: (state + batch, {}), donate=False)
        >>> float(step(jax.numpy.ones(()), 2.0)[0])
        3.0
    """
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def _builtin_options(
    nonfinite_guard: bool,
    ema_decay: float | None,
    loss_scale: str | StepOption | None,
    rollback: bool,
) -> list[StepOption]:
    """The options the flags ask for, innermost first."""
    if loss_scale == "dynamic":
        loss_scale = dynamic_loss_scale()
    elif loss_scale is not None and not (
        isinstance(loss_scale, StepOption) and loss_scale.name == LOSS_SCALE
    ):
        raise ValueError(LOSS_SCALE_MSG.format(got=loss_scale))
    chosen = [rollback_support()] if rollback else []
    if ema_decay is not None:
        chosen.append(ema_of_parameters(ema_decay))
    # The loss scale must see non-finite steps skipped, so it implies the guard.
    if nonfinite_guard or loss_scale is not None:
        chosen.append(skip_nonfinite())
    if loss_scale is not None:
        chosen.append(loss_scale)
    return chosen


def make_train_step(
    loss_fn: Callable,
    *,
    grad_accum_steps: int = 1,
    steps_per_call: int = 1,
    nonfinite_guard: bool = True,
    ema_decay: float | None = None,
    loss_scale: str | StepOption | None = None,
    rollback: bool = False,
    options: Sequence[StepOption] = (),
    donate: bool = True,
    compile_step: Callable[..., Callable] = jit_compile,
    reduce_gradients: Callable[[GradFn], GradFn] | None = None,
    grad_norm: bool = True,
) -> TrainStep:
    """Builds the jitted training step `train_step(state, batch) -> (state, metrics)`.

    Args:
      loss_fn: `loss_fn(model, batch[, key]) -> (loss, (model, metrics))`; it may update the
        model's states through `pax.module_and_value`. With a `key` parameter it receives a
        fresh PRNG key each step, split from `state.rng`.
      grad_accum_steps: micro-batches per step (the batch's leading axis is split).
      steps_per_call: steps per call; every batch leaf then has a leading axis of that size,
        and the metrics come back stacked along it.
      nonfinite_guard: skip (and count) steps whose loss or gradients are not finite.
      ema_decay: keep an EMA of the parameters (`ema_model(state)`).
      loss_scale: "dynamic" (or a `dynamic_loss_scale(...)` option) for float16 compute.
      rollback: keep the state a rollback after non-finite steps adjusts (`rollback_support`).
      options: more `StepOption`s, applied outside the built-in ones, in order.
      donate: donate the input state's buffers (do not use that state after the call).
      compile_step: `compile_step(step, donate=..., flat_state=...)` compiles the step
        (`jit_compile`, or a parallel strategy's: `jax.jit` with the state's shardings on a
        mesh, `jax.pmap` with a device axis on the state and the batch).
      reduce_gradients: wraps the gradient function inside the compiled step, as a strategy
        needs (the "pmap" one averages the loss, the floating-point metrics and the gradients
        over devices: `parallel.average_over_devices`); None leaves it as it is.
      grad_norm: report the gradients' global norm. It costs one more pass over the gradients:
        ~10% of a small model's step on a CPU, next to nothing on an accelerator. The
        non-finite guard and the loss scale read it, so they compute it regardless.

    Returns:
      A `TrainStep`. Metrics hold `loss`, `grad_norm` (see above), `learning_rate` (when the
      optimizer exposes it), the loss function's own metrics, and those of the options.

    Example:
        >>> def loss_fn(model, batch):
        ...     model, logits = pax.purecall(model, batch["x"])
        ...     loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        ...     return loss, (model, {})
        >>> train_step = make_train_step(loss_fn, grad_accum_steps=2)  # doctest: +SKIP
        >>> state, metrics = train_step(state, batch)                   # doctest: +SKIP
    """
    chosen = [*_builtin_options(nonfinite_guard, ema_decay, loss_scale, rollback), *options]
    names = [option.name for option in chosen]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(DUPLICATE_OPTION_MSG.format(name=name))
    differentiate = value_and_grad
    for option in chosen:
        differentiate = option.wrap_grad(differentiate)
    grad_fn = loss_and_grads(loss_fn, differentiate)
    if grad_accum_steps > 1:
        grad_fn = accumulate_gradients(grad_fn, grad_accum_steps)
    if reduce_gradients is not None:
        grad_fn = reduce_gradients(grad_fn)
    update = apply_gradients
    for option in chosen:
        update = option.wrap_update(update)
    needs_norm = grad_norm or nonfinite_guard or loss_scale is not None
    step = update_step(grad_fn, update, with_key=takes_key(loss_fn), grad_norm=needs_norm)
    for option in chosen:
        step = option.wrap(step)
    if steps_per_call > 1:
        step = scan_steps(step, steps_per_call)
    return TrainStep(step, chosen, functools.partial(compile_step, donate=donate))


def make_eval_step(
    eval_fn: Callable,
    use_ema: bool = False,
    also_ema: bool = False,
    compile_step: Callable[[Callable], Callable] = jax.jit,
) -> Callable[[TrainState, Batch], Metrics]:
    """A jitted `eval_step(state, batch) -> metrics` running the model in eval mode.

    The state is neither donated nor changed: state updates `eval_fn` makes (it may call the
    model through `pax.purecall`) are dropped.

    Args:
      eval_fn: `eval_fn(model, batch) -> metrics`.
      use_ema: evaluate the EMA parameters (needs a step built with `ema_decay`).
      also_ema: the model's metrics and, named `ema_*`, those of the EMA parameters, in one call
        (what the `Trainer` reports when it keeps an EMA).
      compile_step: compiles `eval_step(state, batch)`: `jax.jit`, or a parallel strategy's
        `compile_eval_step`.

    Example:
        >>> eval_step = make_eval_step(lambda model, batch: {"loss": ...})  # doctest: +SKIP
        >>> metrics = eval_step(state, batch)                               # doctest: +SKIP
    """

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        model = ema_model(state) if use_ema else state.model
        metrics = eval_fn(model.eval(), batch)
        if also_ema:
            ema = eval_fn(ema_model(state).eval(), batch)
            metrics = {**metrics, **{f"ema_{k}": v for k, v in ema.items()}}
        return metrics

    return compile_step(eval_step)
