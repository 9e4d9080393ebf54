"""Small helpers for short scripts that do not use the Trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paxtrain as pax
from paxtrain.optim import Optimizer


def build_update_fn(loss_fn: Callable, *, scan_mode: bool = False) -> Callable:
    """A PAX-style update function: gradients of `loss_fn`, then one optimizer step.

    Args:
      loss_fn: `loss_fn(model, inputs) -> (loss, (aux, model))`.
      scan_mode: return `((model, optimizer), aux)`, the shape `jax.lax.scan` wants.

    Returns:
      `update_fn(model, optimizer, inputs) -> (aux, model, optimizer)`.

    Example:
        >>> update_fn = jax.jit(build_update_fn(loss_fn))               # doctest: +SKIP
        >>> loss, model, optimizer = update_fn(model, optimizer, batch)  # doctest: +SKIP
    """
    value_and_grad = pax.value_and_grad(loss_fn, has_aux=True)

    def update_fn(model: pax.Module, optimizer: Optimizer, inputs: Any):
        (_, (aux, model)), grads = value_and_grad(model, inputs)
        model, optimizer = optimizer.step(grads, model)
        return ((model, optimizer), aux) if scan_mode else (aux, model, optimizer)

    return update_fn
