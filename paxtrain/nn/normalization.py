"""What every normalization layer shares: `(x - mean) / sqrt(var + eps) * scale + offset`.

`LayerNorm`, `RMSNorm`, `GroupNorm` and `BatchNorm` differ only in where their mean and variance
come from; each implements `_moments(x)`, returning arrays that broadcast against `x`, and this
base class creates the learned scale and offset and applies them along the feature axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.nn.initializers import Initializer, ones, split_rng_key, zeros
from paxtrain.nn.sequential import Chainable


def normalize(
    x: jax.Array,
    mean: jax.Array | float,
    variance: jax.Array,
    eps: float,
    scale: jax.Array | None = None,
    offset: jax.Array | None = None,
) -> jax.Array:
    """`(x - mean) / sqrt(variance + eps)`, then times `scale` and plus `offset` when given.

    Example:
        >>> x = jnp.array([1.0, 3.0])
        >>> nn.normalize(x, x.mean(), x.var(), eps=0.0).tolist()
        [-1.0, 1.0]
    """
    y = (x - mean) * jax.lax.rsqrt(variance + eps)
    if scale is not None:
        y = y * scale
    if offset is not None:
        y = y + offset
    return y


def along_axis(values: jax.Array, ndim: int, axis: int) -> jax.Array:
    """Reshapes a vector so that it broadcasts along `axis` of a rank-`ndim` array.

    Example:
        >>> along_axis(jnp.ones(3), ndim=4, axis=1).shape
        (1, 3, 1, 1)
    """
    shape = [1] * ndim
    shape[axis] = values.shape[0]
    return values.reshape(shape)


class _Normalization(Chainable, pax.Module):
    """Normalizes with `self._moments(x)`; learned `scale` / `offset` (or None) along an axis."""

    feature_axis: int = -1

    def __init__(
        self,
        num_features: int,
        eps: float,
        create_scale: bool,
        create_offset: bool,
        scale_init: Initializer | None,
        offset_init: Initializer | None,
        rng_key: jax.Array | None,
        name: str | None,
    ):
        super().__init__(name=name)
        self.eps = eps
        scale_key, offset_key = split_rng_key(rng_key, 2)
        shape = (num_features,)
        scale = (scale_init or ones)(scale_key, shape, jnp.float32) if create_scale else None
        offset = (offset_init or zeros)(offset_key, shape, jnp.float32) if create_offset else None
        self.register_parameter("scale", scale)
        self.register_parameter("offset", offset)

    def _moments(self, x: jax.Array) -> tuple[jax.Array | float, jax.Array]:
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, variance = self._moments(x)
        scale, offset = (
            None if p is None else along_axis(p, x.ndim, self.feature_axis)
            for p in (self.scale, self.offset)
        )
        return normalize(x, mean, variance, self.eps, scale, offset)
