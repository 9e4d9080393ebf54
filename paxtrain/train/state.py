"""`TrainState`: everything a training step reads and writes, as one module."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

import paxtrain as pax
from paxtrain.optim import Optimizer

NO_EMA_MSG = """\
This state keeps no EMA of the parameters: build the step with `make_train_step(..., ema_decay=0.999)`
and call it at least once."""


class TrainState(pax.Module):
    """The model, its optimizer, a training RNG, the step count, and the extras of step options.

    `step` (int32) counts train-step calls, skipped non-finite steps included; the optimizer's
    own count, which drives learning-rate schedules, counts applied updates only. `extras`
    holds what step options keep between steps (`"ema"`, `"loss_scale"`, `"skipped_steps"`...).

    Example:
        >>> state = TrainState.create(model, optax.adam(1e-3), seed=0)  # doctest: +SKIP
        >>> int(state.step)  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        model: pax.Module,
        optimizer: Optimizer,
        rng: pax.RngSeq,
        step: Any = 0,
        extras: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.rng = rng
        self.register_state("step", jnp.asarray(step, jnp.int32))
        self.register_state("extras", dict(extras or {}))

    @classmethod
    def create(
        cls, model: pax.Module, optimizer: Optimizer | optax.GradientTransformation, seed: int = 0
    ) -> TrainState:
        """A state at step 0; an optax transformation is wrapped in an `Optimizer`.

        Example:
            >>> state = TrainState.create(model, optax.sgd(0.1))  # doctest: +SKIP
        """
        if not isinstance(optimizer, Optimizer):
            optimizer = Optimizer(model, optimizer)
        return cls(model, optimizer, pax.RngSeq(seed=seed))

    def with_extras(self, **extras: Any) -> TrainState:
        """A copy with some extras set.

        Example:
            >>> state = state.with_extras(skipped_steps=jnp.array(0))  # doctest: +SKIP
        """
        return self.replace(extras={**self.extras, **extras})

    @property
    def ema_model(self) -> pax.Module:
        """The model with its EMA parameters (requires the `ema_decay` step option).

        Example:
            >>> ema_model = state.ema_model  # doctest: +SKIP
        """
        if "ema" not in self.extras:
            raise KeyError(NO_EMA_MSG)
        return pax.update_parameters(self.model, self.extras["ema"])
