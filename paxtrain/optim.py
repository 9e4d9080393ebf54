"""Optimizers as modules: an optax `GradientTransformation` and its state, stepped purely.

    >>> import jax.numpy as jnp, optax, paxtrain as pax, paxtrain.nn as nn
    >>> from paxtrain.optim import Optimizer
    >>> model = nn.Linear(2, 1)
    >>> opt = Optimizer(model, optax.sgd(0.1))
    >>> grads = pax.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
    >>> model, opt = opt.step(grads, model)

Only trainable parameters are updated: frozen parameters and states are left bitwise unchanged.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import optax

import paxtrain as pax

M = TypeVar("M", bound=pax.Module)

Schedule = float | optax.Schedule

NOT_A_TRANSFORMATION_MSG = """\
Optimizer expects an optax GradientTransformation (e.g. `optax.adamw(1e-3)`), got {kind}.
Build one with optax, or with `paxtrain.optim.make_transformation(name, learning_rate, ...)`."""

_FACTORIES = {"adamw": optax.adamw, "adam": optax.adam, "sgd": optax.sgd}


class Optimizer(pax.Module):
    """An optax transformation (static) with its state (a module state).

    Args:
      model: the module whose trainable parameters are optimized (its structure is what the
        optimizer state is built on).
      transformation: an optax `GradientTransformation`.

    Example:
        >>> opt = Optimizer(model, optax.adam(1e-3))              # doctest: +SKIP
        >>> model, opt = opt.step(grads, model)                    # doctest: +SKIP
    """

    def __init__(self, model: pax.Module, transformation: optax.GradientTransformation):
        super().__init__()
        if not isinstance(transformation, optax.GradientTransformation):
            raise TypeError(NOT_A_TRANSFORMATION_MSG.format(kind=type(transformation).__name__))
        self.transformation = transformation
        self.register_state("opt_state", transformation.init(pax.select_parameters(model)))

    def step(self, grads: M, model: M) -> tuple[M, Optimizer]:
        """Applies one update; returns the new model and the new optimizer (inputs untouched).

        `grads` is shaped like `pax.select_parameters(model)`, as `pax.grad` returns it.
        """
        params = pax.select_parameters(model)
        updates, opt_state = self.transformation.update(grads, self.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return pax.update_parameters(model, new_params), self.replace(opt_state=opt_state)

    @property
    def learning_rate(self) -> jax.Array | None:
        """The learning rate of the last update, when the transformation exposes it
        (built with `optax.inject_hyperparams`, as `make_transformation` does); else None."""
        hyperparams = optax.tree_utils.tree_get(self.opt_state, "hyperparams", None)
        return None if hyperparams is None else hyperparams.get("learning_rate")


def make_transformation(
    name: str,
    learning_rate: Schedule,
    *,
    clip_grad_norm: float | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """`optax.<name>` with an injectable (so loggable) learning rate, optionally clipped first.

    Args:
      name: "adamw", "adam" or "sgd".
      learning_rate: a float or an optax schedule.
      clip_grad_norm: clip gradients to this global norm before the update.
      **kwargs: passed to the optax factory (b1, b2, weight_decay, momentum...).

    Example:
        >>> tx = make_transformation("adamw", 3e-4, clip_grad_norm=1.0, weight_decay=0.01)
    """
    if name not in _FACTORIES:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {sorted(_FACTORIES)}.")
    transformation = optax.inject_hyperparams(_FACTORIES[name])(
        learning_rate=learning_rate, **kwargs
    )
    if clip_grad_norm is not None:
        transformation = optax.chain(optax.clip_by_global_norm(clip_grad_norm), transformation)
    return transformation


def make_schedule(kind: str, peak: float, total_steps: int, warmup_steps: int = 0) -> Schedule:
    """A learning-rate schedule: "constant", "cosine" (decay to 0) or "warmup_cosine".

    Example:
        >>> float(make_schedule("warmup_cosine", 1.0, 100, warmup_steps=10)(10))
        1.0
    """
    if kind == "constant":
        return peak
    if kind == "cosine":
        return optax.cosine_decay_schedule(peak, decay_steps=total_steps)
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps=warmup_steps, decay_steps=total_steps
        )
    raise ValueError(f"Unknown schedule {kind!r}; choose constant, cosine or warmup_cosine.")
