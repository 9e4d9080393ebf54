"""`Linear`: an affine map of the last axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.core.errors import PaxValueError
from paxtrain.nn.initializers import Initializer, fan_in_normal, split_rng_key, zeros
from paxtrain.nn.sequential import Chainable

INPUT_MSG = """\
Linear: the input's last axis has {got} features, but the weight is {weight_shape} (in_dim \
{in_dim}). Pass inputs [..., {in_dim}], or build `Linear({got}, out_dim)`."""

BIAS_SHAPE_MSG = """\
Linear: bias has shape {bias_shape}, but the weight {weight_shape} gives {out_dim} outputs: a \
`replace` gave them different sizes, which would broadcast into a wrong result. Replace both, \
with bias [{out_dim}]."""


class Linear(Chainable, pax.Module):
    """`y = x @ weight + bias` over the last axis of `x`; `weight` is [in_dim, out_dim].

    Example:
        >>> layer = nn.Linear(3, 4)
        >>> layer
        Linear(in_dim=3, out_dim=4, with_bias=True)
        >>> layer(jnp.ones((2, 3))).shape
        (2, 4)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.in_dim, self.out_dim, self.with_bias = in_dim, out_dim, with_bias
        w_key, b_key = split_rng_key(rng_key, 2)
        w_init = w_init or fan_in_normal
        self.register_parameter("weight", w_init(w_key, (in_dim, out_dim), jnp.float32))
        bias = (b_init or zeros)(b_key, (out_dim,), jnp.float32) if with_bias else None
        self.register_parameter("bias", bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        in_dim, out_dim = self.weight.shape
        if x.shape[-1:] != (in_dim,):  # PaxValueError: PAX code catches ValueError here
            raise PaxValueError(
                INPUT_MSG.format(
                    got=x.shape[-1] if x.ndim else None,
                    weight_shape=self.weight.shape,
                    in_dim=in_dim,
                )
            )
        if self.bias is not None and self.bias.shape != (out_dim,):
            raise ValueError(
                BIAS_SHAPE_MSG.format(
                    bias_shape=self.bias.shape, weight_shape=self.weight.shape, out_dim=out_dim
                )
            )
        y = x @ self.weight
        return y if self.bias is None else y + self.bias
