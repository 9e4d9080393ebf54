"""`TrainState`: everything a training step reads and writes, as one module."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

import paxtrain as pax
from paxtrain.optim import Optimizer


class TrainState(pax.Module):
    """The model, its optimizer, a training RNG, the step count, and the extras of step options.

    `extras` holds what composable step options keep between steps (an EMA of the parameters,
    a loss scale, a count of skipped steps), keyed by option name.

    Example:
        >>> state = TrainState.create(model, optax.adam(1e-3), seed=0)  # doctest: +SKIP
        >>> int(state.step)
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
        """The model with its EMA parameters (requires the `ema_decay` step option)."""
        if "ema" not in self.extras:
            raise KeyError("This state keeps no EMA: build the step with `ema_decay=...`.")
        return pax.update_parameters(self.model, self.extras["ema"])
