"""Small helpers for short scripts that do not use `TrainState` or the `Trainer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paxtrain as pax
from paxtrain.optim import Optimizer


def build_update_fn(loss_fn: Callable, *, scan_mode: bool = False) -> Callable:
    """A PAX-style update function: gradients of `loss_fn`, then one optimizer step.

    Args:
      loss_fn: `loss_fn(model, inputs) -> (loss, (aux, model))`, as in PAX; `aux` is what the
        update function returns, usually the loss itself: `return loss, (loss, model)`.
      scan_mode: build `update_fn((model, optimizer), inputs) -> ((model, optimizer), aux)`,
        the shape `jax.lax.scan` wants, instead.

    Returns:
      `update_fn(model, optimizer, inputs) -> (aux, model, optimizer)`; not jitted.

    Example:
        >>> def loss_fn(model, inputs):                                  # doctest: +SKIP
        ...     model, y = pax.purecall(model, inputs["x"])
        ...     loss = jnp.mean((y - inputs["y"]) ** 2)
        ...     return loss, (loss, model)
        >>> update_fn = jax.jit(build_update_fn(loss_fn))               # doctest: +SKIP
        >>> loss, model, optimizer = update_fn(model, optimizer, batch)  # doctest: +SKIP
    """
    value_and_grad = pax.value_and_grad(loss_fn, has_aux=True)

    def update_fn(model: pax.Module, optimizer: Optimizer, inputs: Any):
        (_, (aux, model)), grads = value_and_grad(model, inputs)
        model, optimizer = optimizer.step(grads, model)
        return aux, model, optimizer

    if not scan_mode:
        return update_fn

    def scan_update_fn(carry: tuple[pax.Module, Optimizer], inputs: Any):
        aux, model, optimizer = update_fn(*carry, inputs)
        return (model, optimizer), aux

    return scan_update_fn
