"""`EMA`: an exponential moving average of a pytree, kept as module state (PAX v0.4.3's)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import paxtrain as pax


class EMA(pax.Module):
    """Tracks `averages = decay_rate * averages + (1 - decay_rate) * x` of a pytree of arrays.

    With `debias=True` the initial value is ignored: the first training call sets `averages` to
    its input (then mixes it in, which leaves it unchanged), so the average is not pulled towards
    an arbitrary start. `debias` is then a state, 0.0 before the first call and 1.0 after. With
    `debias=False` (the default, as in PAX) the average starts at `initial_value`.

    Training calls update the `averages` state, so call it through `pax.purecall`; in eval mode
    (`ema.eval()`) a call returns the averages and changes nothing.

    Example:
        >>> ema = nn.EMA(jnp.zeros(2), 0.5)
        >>> ema, avg = pax.purecall(ema, jnp.array([2.0, 4.0]))
        >>> avg.tolist()
        [1.0, 2.0]
        >>> ema, avg = pax.purecall(ema, jnp.array([2.0, 4.0]))
        >>> avg.tolist()
        [1.5, 3.0]
        >>> ema.eval()(jnp.zeros(2)).tolist()
        [1.5, 3.0]
    """

    def __init__(
        self,
        initial_value: Any,
        decay_rate: float,
        debias: bool = False,
        *,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.decay_rate = decay_rate
        self.register_state("averages", jax.tree_util.tree_map(jnp.asarray, initial_value))
        # A float, not an int, so that `jax.grad` of a model holding an EMA needs no allow_int.
        self.register_state("debias", jnp.array(0.0) if debias else None)

    def __call__(self, xs: Any) -> Any:
        """Folds `xs` into the averages (training mode only) and returns the averages."""
        if not self.training:
            return self.averages
        if self.debias is not None:
            seen = self.debias > 0
            self.averages = jax.tree_util.tree_map(
                lambda a, x: jnp.where(seen, a, x), self.averages, xs
            )
            self.debias = jnp.array(1.0)
        d = self.decay_rate
        self.averages = jax.tree_util.tree_map(lambda a, x: a * d + x * (1 - d), self.averages, xs)
        return self.averages
