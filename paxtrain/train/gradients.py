"""Gradient functions: the loss and its gradients for one batch, or accumulated over micro-batches.

A `GradFn` maps `(state, batch, key)` to `(loss, new_model, metrics, grads)`; the train step calls
one, and `accumulate_gradients` (and a parallel strategy's `reduce_gradients`, such as
`parallel.average_over_devices`) wrap one, so they compose with every step option.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import paxtrain as pax
from paxtrain.train.state import TrainState

Batch = Any
Metrics = dict[str, jax.Array]
# (state, batch, key or None) -> (loss, new model, metrics, grads).
GradFn = Callable[[TrainState, Batch, jax.Array | None], tuple[jax.Array, pax.Module, Metrics, Any]]

ACCUM_SPLIT_MSG = """\
grad_accum_steps={k} does not divide the batch's leading dimension {n} (at {path}).
Use a batch size that is a multiple of grad_accum_steps."""

LOSS_FN_MSG = """\
loss_fn must return (loss, (model, metrics)); got {got}.
    wrong: return loss
    right: model, out = pax.purecall(model, batch["x"]); return loss, (model, {{}})
The model is returned because it carries the states the call updated (BatchNorm, counters)."""


def takes_key(loss_fn: Callable) -> bool:
    """Whether `loss_fn` wants a PRNG key (has a `key` parameter).

    Example:
        >>> takes_key(lambda model, batch, key: 0.0)
        True
    """
    return "key" in inspect.signature(loss_fn).parameters


def _call_loss(loss_fn: Callable) -> Callable[[pax.Module, Batch, jax.Array | None], Any]:
    """`loss_fn(model, batch)`, or `loss_fn(model, batch, key=key)` when it takes a `key`."""
    with_key = takes_key(loss_fn)

    def call(model: pax.Module, batch: Batch, key: jax.Array | None):
        out = loss_fn(model, batch, key=key) if with_key else loss_fn(model, batch)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple)):
            raise TypeError(LOSS_FN_MSG.format(got=type(out).__name__))
        return out

    return call


def loss_and_grads(loss_fn: Callable) -> GradFn:
    """Gradients of `loss_fn` w.r.t. the model's trainable parameters.

    When `state.extras` holds a `"loss_scale"` (dynamic loss scaling), the loss is multiplied by
    it before differentiation and the gradients are divided by it after, so float16 gradients
    do not underflow while the update stays the same.

    Args:
      loss_fn: `loss_fn(model, batch[, key]) -> (loss, (model, metrics))`.

    Returns:
      A `GradFn`.

    Example:
        >>> loss, model, metrics, grads = loss_and_grads(loss_fn)(state, batch, None)  # doctest: +SKIP
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


def check_micro_batches(batch: Batch, steps: int) -> None:
    """Raises ValueError unless every leaf of `batch` splits into `steps` equal micro-batches
    along its leading axis (`accumulate_gradients`); the `Trainer` checks its first batch.

    Example:
        >>> check_micro_batches({"x": jnp.zeros((32, 4))}, 4)
        >>> check_micro_batches({"x": jnp.zeros((32, 4))}, 3)
        Traceback (most recent call last):
        ValueError: grad_accum_steps=3 does not divide the batch's leading dimension 32 (at ['x']).
        Use a batch size that is a multiple of grad_accum_steps.
    """

    def check(path, x):
        if np.shape(x)[0] % steps:
            raise ValueError(
                ACCUM_SPLIT_MSG.format(k=steps, n=np.shape(x)[0], path=jax.tree_util.keystr(path))
            )

    jax.tree_util.tree_map_with_path(check, batch)


def accumulate_gradients(grad_fn: GradFn, steps: int) -> GradFn:
    """Splits the batch into `steps` micro-batches, scans `grad_fn` over them, averages.

    The model is threaded through the micro-batches, so states (BatchNorm statistics, counters)
    see them in order. With a mean loss and equal micro-batches, loss, metrics and gradients
    equal the full batch's; peak memory is that of one micro-batch.

    Args:
      grad_fn: the gradient function of one micro-batch.
      steps: the number of micro-batches; must divide the batch's leading dimension.

    Returns:
      A `GradFn` over the whole batch.

    Example:
        >>> grad_fn = accumulate_gradients(loss_and_grads(loss_fn), 4)  # doctest: +SKIP
    """

    def split(x):
        return x.reshape(steps, x.shape[0] // steps, *x.shape[1:])

    def accumulated(state: TrainState, batch: Batch, key: jax.Array | None):
        check_micro_batches(batch, steps)
        micro = jax.tree_util.tree_map(split, batch)

        def body(carry, inputs):
            model, totals = carry
            micro_batch, micro_key = inputs
            loss, model, metrics, grads = grad_fn(
                state.replace(model=model), micro_batch, micro_key
            )
            totals = jax.tree_util.tree_map(jnp.add, totals, (loss, metrics, grads))
            return (model, totals), None

        loss, _, metrics, grads = jax.eval_shape(grad_fn, state, _first(micro), key)
        zeros = jax.tree_util.tree_map(
            lambda s: jnp.zeros(s.shape, s.dtype), (loss, metrics, grads)
        )
        keys = None if key is None else jax.random.split(key, steps)
        (model, totals), _ = jax.lax.scan(body, (state.model, zeros), (micro, keys))
        loss, metrics, grads = jax.tree_util.tree_map(lambda t: t / steps, totals)
        return loss, model, metrics, grads

    return accumulated


def _first(stacked: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x[0], stacked)
