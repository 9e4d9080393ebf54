"""Optimizers as modules: an optax `GradientTransformation` and its state, stepped purely.

    >>> import jax.numpy as jnp, optax, paxtrain as pax
    >>> from paxtrain.optim import Optimizer
    >>> class Scale(pax.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_parameter("w", jnp.ones(2))
    ...     def __call__(self, x):
    ...         return self.w * x
    >>> model = Scale()
    >>> opt = Optimizer(model, optax.sgd(0.1))
    >>> grads = pax.grad(lambda m: m(jnp.ones(2)).sum())(model)
    >>> model, opt = opt.step(grads, model)
    >>> model.w.tolist()
    [0.8999999761581421, 0.8999999761581421]

Only trainable parameters are updated: frozen parameters and states are left bitwise unchanged.
The learning rate is readable (for logging) when the transformation is built with
`optax.inject_hyperparams`, as `make_transformation` and the `sgd` / `adam` / `adamw` factories do.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax

import paxtrain as pax

M = TypeVar("M", bound=pax.Module)

Schedule = float | optax.Schedule

NOT_A_TRANSFORMATION_MSG = """\
Optimizer expects an optax GradientTransformation, got {kind}.
    wrong: Optimizer(model, optax.adamw)          # the factory, not a transformation
    right: Optimizer(model, optax.adamw(1e-3))
or use `paxtrain.optim.adamw(1e-3)(model)`, which also makes the learning rate loggable."""

STRUCTURE_CHANGED_MSG = """\
The model's trainable parameters no longer have the structure this Optimizer was built for.
Freezing or unfreezing parameters, switching train/eval mode, applying a mixed-precision policy or
adding layers changes that structure; do it before building the optimizer:
    wrong: opt = Optimizer(model, tx); model = pax.freeze_parameters(model)
    right: model = pax.freeze_parameters(model); opt = Optimizer(model, tx)
Expected {expected}
got      {got}"""

UNKNOWN_OPTIMIZER_MSG = "Unknown optimizer {name!r}; choose one of {choices}."

_FACTORIES = {"adamw": optax.adamw, "adam": optax.adam, "sgd": optax.sgd}


class Optimizer(pax.Module):
    """An optax transformation (static) with its state (a module state).

    The state is built from `pax.select_parameters(model)`, so frozen parameters and states get
    no optimizer state and are never updated.

    Args:
      model: the module whose trainable parameters are optimized.
      transformation: an optax `GradientTransformation`.

    Example:
        >>> opt = Optimizer(model, optax.adam(1e-3))              # doctest: +SKIP
        >>> model, opt = opt.step(grads, model)                    # doctest: +SKIP
    """

    def __init__(self, model: pax.Module, transformation: optax.GradientTransformation):
        super().__init__()
        if not isinstance(transformation, optax.GradientTransformation):
            raise TypeError(NOT_A_TRANSFORMATION_MSG.format(kind=type(transformation).__name__))
        params = pax.select_parameters(model)
        self.transformation = transformation
        # Checked on each step: a structure change otherwise surfaces as an opaque optax error.
        self.parameter_structure = jax.tree_util.tree_structure(params)
        self.register_state("opt_state", transformation.init(params))

    def step(self, grads: M, model: M) -> tuple[M, Optimizer]:
        """Applies one update; returns the new model and the new optimizer (inputs untouched).

        Args:
          grads: shaped like `pax.select_parameters(model)`, as `pax.grad` returns them.
          model: the model to update.

        Returns:
          `(new_model, new_optimizer)`.

        Example:
            >>> model, opt = opt.step(grads, model)  # doctest: +SKIP
        """
        params = pax.select_parameters(model)
        # `jax.grad` of the whole module (PAX examples) also has leaves for states: drop them.
        grads = pax.select_parameters(grads)
        structure = jax.tree_util.tree_structure(params)
        if structure != self.parameter_structure:
            raise ValueError(
                STRUCTURE_CHANGED_MSG.format(expected=self.parameter_structure, got=structure)
            )
        updates, opt_state = self.transformation.update(grads, self.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return pax.update_parameters(model, new_params), self.replace(opt_state=opt_state)

    def __call__(self, grads: M, params: M) -> M:
        """opax's convention: advances the state and returns the updates to subtract.

        Call it through `pax.module_and_value(optimizer)(grads, params)`, then
        `params.map(jax.lax.sub, updates)`; `step` does both in one call.

        Example:
            >>> opt, updates = pax.module_and_value(opt)(grads, model.parameters())  # doctest: +SKIP
        """
        params, grads = pax.select_parameters(params), pax.select_parameters(grads)
        updates, self.opt_state = self.transformation.update(grads, self.opt_state, params)
        return jax.tree_util.tree_map(jnp.negative, updates)

    @property
    def learning_rate(self) -> jax.Array | None:
        """The learning rate of the last update (of step 0 before any), or None if unknown.

        Known when exactly one part of the transformation was built with
        `optax.inject_hyperparams` and has a `learning_rate` hyperparameter, as
        `make_transformation` does; the value then lives in the optimizer state, so it is
        correct inside `jit` and after a checkpoint restore.

        Example:
            >>> float(sgd(0.1)(model).learning_rate)  # doctest: +SKIP
            0.1
        """
        found = [
            hyperparams["learning_rate"]
            for _, hyperparams in optax.tree.get_all_with_path(self.opt_state, "hyperparams")
            if "learning_rate" in hyperparams
        ]
        return found[0] if len(found) == 1 else None


def make_transformation(
    name: str,
    learning_rate: Schedule,
    *,
    clip_grad_norm: float | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """`optax.<name>` with an injected (so loggable) learning rate, optionally clipped first.

    Args:
      name: "adamw", "adam" or "sgd".
      learning_rate: a float or an optax schedule (a function of the update count).
      clip_grad_norm: clip gradients to this global norm before the update.
      **kwargs: passed to the optax factory (b1, b2, weight_decay, momentum...).

    Returns:
      An optax `GradientTransformation`.

    Example:
        >>> tx = make_transformation("adamw", 3e-4, clip_grad_norm=1.0, weight_decay=0.01)
    """
    if name not in _FACTORIES:
        raise ValueError(UNKNOWN_OPTIMIZER_MSG.format(name=name, choices=sorted(_FACTORIES)))
    # Hyperparameters in float32 whatever the parameters' dtype: in bfloat16, Adam's b2=0.999
    # rounds to 1.0 and every update is NaN.
    transformation = optax.inject_hyperparams(_FACTORIES[name], hyperparam_dtype=jnp.float32)(
        learning_rate=learning_rate, **kwargs
    )
    if clip_grad_norm is not None:
        transformation = optax.chain(optax.clip_by_global_norm(clip_grad_norm), transformation)
    return transformation


MODEL_FIRST_MSG = """\
paxtrain.optim.{name} takes the learning rate first and returns a factory of optimizers, as \
opax did; got a module as the learning rate.
    wrong: opt = paxtrain.optim.{name}(model, 1e-3)
    right: opt = paxtrain.optim.{name}(1e-3)(model.parameters())"""


class OptimizerFactory:
    """An optax transformation not yet bound to parameters: opax's `opax.adam(1e-3)`.

    Calling it on the parameters (or the model) gives the `Optimizer`; `chain` combines
    factories.

    Example:
        >>> factory = adam(1e-3)
        >>> opt = factory(model.parameters())  # doctest: +SKIP
    """

    def __init__(self, transformation: optax.GradientTransformation):
        self.transformation = transformation

    def __call__(self, params: pax.Module) -> Optimizer:
        return Optimizer(params, self.transformation)


def _factory(name: str, learning_rate: Schedule, **kwargs: Any) -> OptimizerFactory:
    if isinstance(learning_rate, pax.Module):
        raise TypeError(MODEL_FIRST_MSG.format(name=name))
    return OptimizerFactory(make_transformation(name, learning_rate, **kwargs))


def sgd(
    learning_rate: Schedule, momentum: float | None = None, *, clip_grad_norm=None, **kwargs
) -> OptimizerFactory:
    """`optax.sgd` as opax spelt it: `sgd(1e-2, 0.9)(model.parameters())`.

    Example:
        >>> opt = sgd(0.1, momentum=0.9)(model.parameters())  # doctest: +SKIP
    """
    return _factory(
        "sgd", learning_rate, momentum=momentum, clip_grad_norm=clip_grad_norm, **kwargs
    )


def adam(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    clip_grad_norm: float | None = None,
    **kwargs: Any,
) -> OptimizerFactory:
    """`optax.adam` as opax spelt it: `adam(1e-3)(model.parameters())`.

    Example:
        >>> opt = adam(1e-3)(model.parameters())  # doctest: +SKIP
    """
    return _factory(
        "adam", learning_rate, b1=b1, b2=b2, eps=eps, clip_grad_norm=clip_grad_norm, **kwargs
    )


def adamw(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    *,
    clip_grad_norm: float | None = None,
    **kwargs: Any,
) -> OptimizerFactory:
    """`optax.adamw` as opax spelt it: `adamw(1e-3, weight_decay=1e-4)(model.parameters())`.

    opax decayed every parameter; optax (and so this) decays every parameter too unless a
    `mask` is passed.

    Example:
        >>> opt = adamw(3e-4, weight_decay=0.01)(model.parameters())  # doctest: +SKIP
    """
    return _factory(
        "adamw",
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        clip_grad_norm=clip_grad_norm,
        **kwargs,
    )


def clip_by_global_norm(max_global_norm: float) -> OptimizerFactory:
    """`optax.clip_by_global_norm`, to `chain` before an optimizer, as in opax.

    Example:
        >>> opt = chain(clip_by_global_norm(1.0), adam(1e-3))(model.parameters())  # doctest: +SKIP
    """
    return OptimizerFactory(optax.clip_by_global_norm(max_global_norm))


def chain(*factories: OptimizerFactory) -> OptimizerFactory:
    """`optax.chain` of factories, applied in order, as `opax.chain`.

    Example:
        >>> opt = chain(clip_by_global_norm(1.0), adam(1e-3))(model.parameters())  # doctest: +SKIP
    """
    return OptimizerFactory(optax.chain(*(f.transformation for f in factories)))


def apply_gradients(
    model: M, optimizer: Optimizer, grads: M, *, all_finite: jax.Array | None = None
) -> tuple[M, Optimizer]:
    """One optimizer step, as `opax.apply_gradients`: returns `(new_model, new_optimizer)`.

    With `all_finite` (a boolean scalar, e.g. `jmp.all_finite(grads)`), a step whose value is
    False returns the inputs unchanged.

    Example:
        >>> model, opt = apply_gradients(model, opt, grads=grads)  # doctest: +SKIP
    """
    new_model, new_optimizer = optimizer.step(grads, model)
    if all_finite is None:
        return new_model, new_optimizer
    return jax.tree_util.tree_map(
        lambda new, old: jnp.where(all_finite, new, old),
        (new_model, new_optimizer),
        (model, optimizer),
    )
