"""PAX v0.4.3's `pax.utils`: `build_update_fn`, `grad`, `scan`, for short scripts.

`build_update_fn` is PAX's, with paxtrain optimizers: `update_fn(model, optimizer, *inputs,
**kwinputs) -> (model, optimizer, aux)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

import paxtrain as pax
from paxtrain.core.transforms import grad, scan
from paxtrain.optim import Optimizer

__all__ = ["build_update_fn", "grad", "scan"]

MODEL_CHANGED_MSG = """\
paxtrain: build_update_fn: the model returned by loss_fn has another structure than the model \
passed in. loss_fn must return `loss, (aux, model)` with the updated model, e.g.
    def loss_fn(model, x, y):
        model, y_hat = pax.purecall(model, x)
        loss = jnp.mean((y_hat - y) ** 2)
        return loss, (loss, model)"""

NOT_AN_OPTIMIZER_MSG = """\
paxtrain: build_update_fn: the optimizer must be a paxtrain.optim optimizer (with a `step(grads, \
model)` method); got {kind}. Build it with e.g. `paxtrain.optim.adam(1e-3)(model.parameters())` \
or `paxtrain.optim.Optimizer(model, optax.adam(1e-3))`."""


def build_update_fn(loss_fn: Callable, *, scan_mode: bool = False) -> Callable:
    """PAX's simple update function: gradients of `loss_fn`, then one optimizer step.

    Args:
      loss_fn: `loss_fn(model, *inputs, **kwinputs) -> (loss, (aux, model))`, with the updated
        model (e.g. new BatchNorm statistics) in the auxiliary output.
      scan_mode: build `update_fn((model, optimizer), *inputs) -> ((model, optimizer), aux)`,
        the shape `jax.lax.scan` wants, instead.

    Returns:
      `update_fn(model, optimizer, *inputs, **kwinputs) -> (model, optimizer, aux)`; not jitted.

    Example:
        >>> def loss_fn(model, x, y):
        ...     model, y_hat = pax.purecall(model, x)
        ...     loss = jnp.mean((y_hat - y) ** 2)
        ...     return loss, (loss, model)
        >>> net = pax.nn.Linear(2, 1)
        >>> optimizer = pax.optim.adam(1e-2)(net.parameters())
        >>> update_fn = jax.jit(pax.utils.build_update_fn(loss_fn))
        >>> net, optimizer, loss = update_fn(net, optimizer, jnp.ones((4, 2)), jnp.zeros((4, 1)))
    """
    value_and_grad = pax.value_and_grad(loss_fn, has_aux=True)

    def update_fn(model: pax.Module, optimizer: Optimizer, *inputs: Any, **kwinputs: Any):
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(NOT_AN_OPTIMIZER_MSG.format(kind=type(optimizer).__name__))
        structure = jax.tree_util.tree_structure(model)
        (_, (aux, model)), grads = value_and_grad(model, *inputs, **kwinputs)
        if jax.tree_util.tree_structure(model) != structure:
            raise ValueError(MODEL_CHANGED_MSG)
        model, optimizer = optimizer.step(grads, model)
        return model, optimizer, aux

    if not scan_mode:
        return update_fn

    def scan_update_fn(carry: tuple[pax.Module, Optimizer], *inputs: Any, **kwinputs: Any):
        model, optimizer, aux = update_fn(*carry, *inputs, **kwinputs)
        return (model, optimizer), aux

    return scan_update_fn
