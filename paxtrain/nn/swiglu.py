"""`SwiGLU`: the gated feed-forward block of PaLM and Llama (Shazeer, 2020)."""

from __future__ import annotations

import jax

import paxtrain as pax
from paxtrain.nn.initializers import Initializer, split_rng_key
from paxtrain.nn.linear import Linear
from paxtrain.nn.sequential import Chainable


class SwiGLU(Chainable, pax.Module):
    """`down_proj(silu(gate_proj(x)) * up_proj(x))`, three bias-free projections.

    `gate_proj` and `up_proj` widen to `hidden_dim`, `down_proj` narrows back: the names that
    `paxtrain.parallel`'s tensor-parallel rules split by columns and by rows.

    Args:
      model_dim: input and output width.
      hidden_dim: width of the gated hidden layer.
      w_init: initializer of the three projections (default: `Linear`'s).

    Example:
        >>> mlp = nn.SwiGLU(8, 24)
        >>> mlp(jnp.ones((2, 8))).shape
        (2, 8)
    """

    def __init__(
        self,
        model_dim: int,
        hidden_dim: int,
        w_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.model_dim, self.hidden_dim = model_dim, hidden_dim
        gate_key, up_key, down_key = split_rng_key(rng_key, 3)
        self.gate_proj = Linear(model_dim, hidden_dim, False, w_init, rng_key=gate_key)
        self.up_proj = Linear(model_dim, hidden_dim, False, w_init, rng_key=up_key)
        self.down_proj = Linear(hidden_dim, model_dim, False, w_init, rng_key=down_key)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
