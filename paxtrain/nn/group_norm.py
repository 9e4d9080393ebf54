"""`GroupNorm`: normalization over groups of channels of each example."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from paxtrain.nn.initializers import Initializer
from paxtrain.nn.normalization import _Normalization

GROUPS_MSG = """\
GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})."""


class GroupNorm(_Normalization):
    """Splits the channels into `num_groups` groups and normalizes each group of each example
    over its channels and all spatial positions (Wu & He, 2018); then per-channel scale/offset.

    Inputs are [batch, ..., channels], or channels at `channel_axis`.

    Example:
        >>> norm = nn.GroupNorm(num_groups=2, num_channels=4)
        >>> norm
        GroupNorm(num_groups=2, num_channels=4, channel_axis=-1, eps=1e-05)
        >>> norm(jnp.ones((1, 3, 3, 4))).shape
        (1, 3, 3, 4)
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        create_scale: bool = True,
        create_offset: bool = True,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        channel_axis: int = -1,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        if num_channels % num_groups:
            raise ValueError(GROUPS_MSG.format(num_channels=num_channels, num_groups=num_groups))
        self.num_groups, self.num_channels = num_groups, num_channels
        self.channel_axis = channel_axis
        super().__init__(
            num_channels, eps, create_scale, create_offset, scale_init, offset_init, rng_key, name
        )

    @property
    def feature_axis(self) -> int:
        return self.channel_axis

    def _moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.channel_axis % x.ndim
        per_group = self.num_channels // self.num_groups
        # Split the channel axis into (group, channel within group) at positions c, c + 1.
        grouped = x.reshape(*x.shape[:c], self.num_groups, per_group, *x.shape[c + 1 :])
        axes = tuple(a for a in range(1, grouped.ndim) if a != c)
        mean = jnp.mean(grouped, axes, keepdims=True)
        variance = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
        # Back to x's rank: drop the within-group axis, then repeat each group's statistic.
        return tuple(jnp.repeat(jnp.squeeze(m, c + 1), per_group, axis=c) for m in (mean, variance))
