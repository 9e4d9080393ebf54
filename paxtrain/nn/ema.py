"""`EMA`: an exponential moving average of a pytree, kept as module state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import paxtrain as pax


class EMA(pax.Module):
    """Tracks `average_t = decay * average_{t-1} + (1 - decay) * x_t` of a pytree of arrays.

    With `debias=True` (as in Adam and `optax.ema`) the average starts from zero and is divided
    by `1 - decay**t`, so it is a properly weighted mean of the values seen so far from the first
    call on (the first call returns `x_1`). Equivalently, each step mixes in `x_t` with weight
    `(1 - decay) / (1 - decay**t)`, which is how it is computed: only the debiased `average` is
    stored. With `debias=False` the average starts at `initial_value_tree`.

    Each call updates the `average` and `count` states, so call it through `pax.purecall`.

    Example:
        >>> ema = nn.EMA(jnp.zeros(2), decay=0.5, debias=False)
        >>> ema, avg = pax.purecall(ema, jnp.array([2.0, 4.0]))
        >>> avg.tolist()
        [1.0, 2.0]
        >>> ema, avg = pax.purecall(ema, jnp.array([2.0, 4.0]))
        >>> avg.tolist()
        [1.5, 3.0]
    """

    def __init__(
        self, initial_value_tree: Any, decay: float, debias: bool = True, *, name: str | None = None
    ):
        super().__init__(name=name)
        self.decay, self.debias = decay, debias
        self.register_state("average", jax.tree_util.tree_map(jnp.asarray, initial_value_tree))
        self.register_state("count", jnp.array(0, jnp.int32))

    def __call__(self, tree: Any) -> Any:
        """Folds `tree` into the average and returns the new average."""
        self.count = self.count + 1
        weight = 1.0 - self.decay
        if self.debias:
            weight = weight / (1.0 - jnp.power(self.decay, self.count))
        self.average = jax.tree_util.tree_map(
            lambda a, x: (1.0 - weight) * a + weight * x, self.average, tree
        )
        return self.average
