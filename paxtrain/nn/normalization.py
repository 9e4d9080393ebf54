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


PARAM_SHAPE_MSG = """\
{cls}.{attr} has shape {got}, but this layer was built for {expected}: a `replace` (or a weight
conversion) gave it another shape, which would broadcast into a wrong result. Give it shape
{expected}, e.g. `array.reshape({expected})`."""

CALL_TIME_MSG = """\
{cls}: cannot pass `{attr}` at call time: the layer has its own `{attr}` (create_{attr}=True). \
Build it with `create_{attr}=False` to pass `{attr}` when calling it (as in PAX)."""


class _Normalization(Chainable, pax.Module):
    """Normalizes with `self._moments(x)`; learned `scale` / `offset` (or None) along an axis.

    As in PAX, a layer built with `create_scale=False` (or `create_offset=False`) takes them at
    call time: `norm(x, scale, offset)`. A vector of `num_features` values is applied along the
    feature axis (for channels-first data too, where PAX broadcast it along the last axis);
    any other shape is broadcast against `x` as in PAX, aligned at the last axis.
    """

    feature_axis: int = -1
    size_attr: str = "num_channels"  # the attribute holding the number of features

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
        shape = self._param_shape()
        scale = (scale_init or ones)(scale_key, shape, jnp.float32) if create_scale else None
        offset = (offset_init or zeros)(offset_key, shape, jnp.float32) if create_offset else None
        self.register_parameter("scale", scale)
        self.register_parameter("offset", offset)

    def _param_shape(self) -> tuple[int, ...]:
        """The shape of `scale` and `offset`: [num_features] unless PAX's layer used another."""
        return (getattr(self, self.size_attr),)

    def _moments(self, x: jax.Array) -> tuple[jax.Array | float, jax.Array]:
        raise NotImplementedError

    def _own(self, attr: str, ndim: int) -> jax.Array | None:
        value = getattr(self, attr)
        if value is None:
            return None
        if value.shape != self._param_shape():
            raise ValueError(
                PARAM_SHAPE_MSG.format(
                    cls=type(self).__name__,
                    attr=attr,
                    got=tuple(value.shape),
                    expected=self._param_shape(),
                )
            )
        return along_axis(value.reshape(-1), ndim, self.feature_axis)

    def _given(self, attr: str, value: jax.Array, ndim: int) -> jax.Array:
        if getattr(self, attr) is not None:
            raise ValueError(CALL_TIME_MSG.format(cls=type(self).__name__, attr=attr))
        value = jnp.asarray(value)
        if value.shape == (getattr(self, self.size_attr),):
            return along_axis(value, ndim, self.feature_axis)
        return jax.lax.broadcast_to_rank(value, ndim)

    def __call__(
        self, x: jax.Array, scale: jax.Array | None = None, offset: jax.Array | None = None
    ) -> jax.Array:
        mean, variance = self._moments(x)
        scale, offset = (
            self._own(attr, x.ndim) if given is None else self._given(attr, given, x.ndim)
            for attr, given in (("scale", scale), ("offset", offset))
        )
        return normalize(x, mean, variance, self.eps, scale, offset)
