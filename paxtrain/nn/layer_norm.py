"""`LayerNorm` and `RMSNorm`: normalization over the features of each example."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from paxtrain.nn.initializers import Initializer
from paxtrain.nn.normalization import _Normalization

Axis = int | Sequence[int] | slice


def _axes(axis: Axis) -> tuple[int, ...] | slice:
    return axis if isinstance(axis, slice) else (axis,) if isinstance(axis, int) else tuple(axis)


def _resolve(axis: tuple[int, ...] | slice, ndim: int) -> tuple[int, ...]:
    return tuple(range(ndim)[axis]) if isinstance(axis, slice) else axis


class LayerNorm(_Normalization):
    """Normalizes `x` to zero mean and unit variance over `axis`, then scales and offsets.

    `scale` and `offset` have shape [num_channels] and apply along the last axis. The
    positional order is PAX v0.4.3's: `LayerNorm(num_channels, axis, create_scale,
    create_offset, eps, scale_init, offset_init)`; `axis` may be an int, ints or a slice.

    Example:
        >>> norm = nn.LayerNorm(4)
        >>> norm
        LayerNorm(num_channels=4, axis=(-1,), eps=1e-05)
        >>> y = norm(jnp.arange(8.0).reshape(2, 4))
        >>> jnp.allclose(y.mean(-1), 0.0, atol=1e-6).item()
        True
    """

    def __init__(
        self,
        num_channels: int,
        axis: Axis = -1,
        create_scale: bool = True,
        create_offset: bool = True,
        eps: float = 1e-5,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        # Sizes are set before the base class's attributes so that they lead the repr.
        self.num_channels, self.axis = num_channels, _axes(axis)
        super().__init__(
            num_channels, eps, create_scale, create_offset, scale_init, offset_init, rng_key, name
        )

    def _moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        axis = _resolve(self.axis, x.ndim)
        mean = jnp.mean(x, axis, keepdims=True)
        return mean, jnp.mean(jnp.square(x - mean), axis, keepdims=True)


class RMSNorm(_Normalization):
    """Divides `x` by its root mean square over `axis` (no centering), then scales.

    `y = x / sqrt(mean(x**2) + eps) * scale`, as in Zhang & Sennrich (2019).

    Example:
        >>> norm = nn.RMSNorm(4, eps=0.0)
        >>> norm(jnp.array([2.0, -2.0, 2.0, -2.0])).tolist()
        [1.0, -1.0, 1.0, -1.0]
    """

    size_attr = "num_features"

    def __init__(
        self,
        num_features: int,
        axis: Axis = -1,
        eps: float = 1e-5,
        create_scale: bool = True,
        scale_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        self.num_features, self.axis = num_features, _axes(axis)
        super().__init__(num_features, eps, create_scale, False, scale_init, None, rng_key, name)

    def _moments(self, x: jax.Array) -> tuple[float, jax.Array]:
        return 0.0, jnp.mean(jnp.square(x), _resolve(self.axis, x.ndim), keepdims=True)
