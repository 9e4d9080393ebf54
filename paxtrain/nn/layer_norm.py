"""`LayerNorm` and `RMSNorm`: normalization over the features of each example."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from paxtrain.nn.initializers import Initializer
from paxtrain.nn.normalization import _Normalization


def _axes(axis: int | Sequence[int]) -> tuple[int, ...]:
    return (axis,) if isinstance(axis, int) else tuple(axis)


class LayerNorm(_Normalization):
    """Normalizes `x` to zero mean and unit variance over `axis`, then scales and offsets.

    `scale` and `offset` have shape [num_features] and apply along the last axis.

    Example:
        >>> norm = nn.LayerNorm(4)
        >>> norm
        LayerNorm(num_features=4, axis=(-1,), eps=1e-05)
        >>> y = norm(jnp.arange(8.0).reshape(2, 4))
        >>> jnp.allclose(y.mean(-1), 0.0, atol=1e-6).item()
        True
    """

    def __init__(
        self,
        num_features: int,
        axis: int | Sequence[int] = -1,
        eps: float = 1e-5,
        create_scale: bool = True,
        create_offset: bool = True,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        # Sizes are set before the base class's attributes so that they lead the repr.
        self.num_features, self.axis = num_features, _axes(axis)
        super().__init__(
            num_features, eps, create_scale, create_offset, scale_init, offset_init, rng_key, name
        )

    def _moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean = jnp.mean(x, self.axis, keepdims=True)
        return mean, jnp.mean(jnp.square(x - mean), self.axis, keepdims=True)


class RMSNorm(_Normalization):
    """Divides `x` by its root mean square over `axis` (no centering), then scales.

    `y = x / sqrt(mean(x**2) + eps) * scale`, as in Zhang & Sennrich (2019).

    Example:
        >>> norm = nn.RMSNorm(4, eps=0.0)
        >>> norm(jnp.array([2.0, -2.0, 2.0, -2.0])).tolist()
        [1.0, -1.0, 1.0, -1.0]
    """

    def __init__(
        self,
        num_features: int,
        axis: int | Sequence[int] = -1,
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
        return 0.0, jnp.mean(jnp.square(x), self.axis, keepdims=True)
