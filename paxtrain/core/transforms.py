"""JAX transformations that know about modules: gradients w.r.t. parameters, and `scan`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from paxtrain.core.module import Module
from paxtrain.core.partition import select_parameters, update_parameters


def value_and_grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """`jax.value_and_grad` of `fn(module, *args)` w.r.t. the module's trainable parameters.

    States (integer counters, running statistics) and frozen parameters are held constant. The
    gradients come back as `select_parameters(module)` does: the module's structure with None
    where there is no gradient.

    Example:
        >>> def loss_fn(model, x, y):
        ...     model, y_hat = pax.purecall(model, x)
        ...     return jnp.mean((y_hat - y) ** 2), model
        >>> model, x, y = nn.Linear(2, 1), jnp.ones((4, 2)), jnp.zeros((4, 1))
        >>> (loss, model), grads = pax.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        >>> grads.weight.shape
        (2, 1)
    """

    def fn_of_parameters(params: Module, module: Module, *args: Any, **kwargs: Any) -> Any:
        return fn(update_parameters(module, params), *args, **kwargs)

    value_and_grad_fn = jax.value_and_grad(fn_of_parameters, has_aux=has_aux)

    def value_and_grad_of_module(module: Module, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(module, Module):
            raise TypeError(
                f"pax.value_and_grad differentiates w.r.t. the parameters of its first argument, "
                f"which must be a module; got {type(module).__name__}. Use jax.value_and_grad "
                f"for plain arrays."
            )
        return value_and_grad_fn(select_parameters(module), module, *args, **kwargs)

    return value_and_grad_of_module


def grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """`jax.grad` of `fn(module, *args)` w.r.t. the module's trainable parameters.

    Example:
        >>> grads = pax.grad(lambda model, x: jnp.sum(model(x)))(model, x)  # doctest: +SKIP
    """
    value_and_grad_fn = value_and_grad(fn, has_aux=has_aux)

    def grad_of_module(module: Module, *args: Any, **kwargs: Any) -> Any:
        value, grads = value_and_grad_fn(module, *args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return grad_of_module


def _swap_time_and_batch(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), tree)


def scan(
    fn: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any,
    length: int | None = None,
    unroll: int = 1,
    time_major: bool = True,
) -> tuple[Any, Any]:
    """`jax.lax.scan` with a `time_major` option: False means `xs` and `ys` are batch-major.

    The carry may hold modules; inside `fn`, call them with `pax.module_and_value` and return
    the new module as the carry.

    Example:
        >>> def step(total, x):  # carry, one time step of xs -> new carry, output
        ...     return total + x, total
        >>> xs = jnp.ones((2, 5))  # [batch, time]
        >>> total, ys = pax.scan(step, jnp.zeros(2), xs, time_major=False)
        >>> total.tolist(), ys.shape
        ([5.0, 5.0], (2, 5))
    """
    if not time_major:
        xs = _swap_time_and_batch(xs)
    carry, ys = jax.lax.scan(fn, init, xs, length=length, unroll=unroll)
    if not time_major:
        ys = _swap_time_and_batch(ys)
    return carry, ys
