"""`GroupNorm`: normalization over groups of channels of each example."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from paxtrain.nn.initializers import Initializer
from paxtrain.nn.normalization import _Normalization

GROUPS_MSG = """\
GroupNorm: num_channels ({num_channels}) must be divisible by groups ({groups})."""

DATA_FORMAT_MSG = """\
GroupNorm: data_format must be "channels_last" / "N...C" or "channels_first" / "NC..."; got \
{data_format!r}."""

_CHANNEL_INDEX = {"channels_last": -1, "N...C": -1, "channels_first": 1, "NC...": 1}


class GroupNorm(_Normalization):
    """Splits the channels into `groups` groups and normalizes each group of each example over
    `axis` (Wu & He, 2018); then per-channel scale/offset along the channel axis.

    The arguments and their order are PAX v0.4.3's (and Haiku's): `axis` names axes of the input
    (by default all but the batch axis); naming the channel axis means the channels within a
    group, so the statistics are never shared across groups.

    Example:
        >>> norm = nn.GroupNorm(2, 4)
        >>> norm
        GroupNorm(groups=2, num_channels=4, data_format='channels_last', eps=1e-05)
        >>> norm(jnp.ones((1, 3, 3, 4))).shape
        (1, 3, 3, 4)
    """

    def __init__(
        self,
        groups: int,
        num_channels: int,
        axis: int | Sequence[int] | slice = slice(1, None),
        create_scale: bool = True,
        create_offset: bool = True,
        eps: float = 1e-5,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        data_format: str = "channels_last",
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        if num_channels % groups:
            raise ValueError(GROUPS_MSG.format(num_channels=num_channels, groups=groups))
        if data_format not in _CHANNEL_INDEX:
            raise ValueError(DATA_FORMAT_MSG.format(data_format=data_format))
        self.groups, self.num_channels = groups, num_channels
        self.axis = (
            (axis,) if isinstance(axis, int) else axis if isinstance(axis, slice) else tuple(axis)
        )
        self.data_format = data_format
        super().__init__(
            num_channels, eps, create_scale, create_offset, scale_init, offset_init, rng_key, name
        )

    @property
    def feature_axis(self) -> int:
        return _CHANNEL_INDEX[self.data_format]

    def _moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.feature_axis % x.ndim
        per_group = self.num_channels // self.groups
        axes = range(x.ndim)[self.axis] if isinstance(self.axis, slice) else self.axis
        # Split the channel axis into (group, channel within group) at positions c, c + 1; an
        # axis at or after the channel axis moves one on, so the channel axis becomes "within".
        axes = tuple(a + 1 if a >= c else a for a in (a % x.ndim for a in axes))
        grouped = x.reshape(*x.shape[:c], self.groups, per_group, *x.shape[c + 1 :])
        mean = jnp.mean(grouped, axes, keepdims=True)
        variance = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
        # Back to x's shape: each group's statistic repeated over its channels.
        return tuple(jnp.broadcast_to(m, grouped.shape).reshape(x.shape) for m in (mean, variance))
