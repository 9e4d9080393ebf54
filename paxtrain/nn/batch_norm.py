"""`BatchNorm`: normalization with batch statistics in training, running averages in eval."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from paxtrain.nn.initializers import Initializer
from paxtrain.nn.normalization import _Normalization, along_axis

RANK_MSG = """\
{cls} expects inputs of rank {ranks} (batch first, channels at axis {channel_axis}); got shape \
{shape}.{hint}"""


class BatchNorm(_Normalization):
    """Batch normalization (Ioffe & Szegedy, 2015) over every axis but `channel_axis`.

    In training mode it normalizes with the statistics of the batch and updates the running
    averages `ema_mean`, `ema_var` (states): `ema = momentum * ema + (1 - momentum) * batch_stat`,
    with the biased batch variance. That update is a mutation, so call it through
    `pax.purecall` / `pax.module_and_value`. In eval mode (`bn.eval()`) it normalizes with the
    running averages and changes nothing.

    Example:
        >>> bn = nn.BatchNorm(2, momentum=0.5)
        >>> bn, y = pax.purecall(bn, jnp.array([[0.0, 2.0], [2.0, 4.0]]))
        >>> bn.ema_mean.tolist()
        [0.5, 1.5]
        >>> y.round(3).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
    """

    input_ranks: tuple[int, ...] | None = None  # None: any rank >= 2

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.9,
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
        self.num_features, self.momentum, self.channel_axis = num_features, momentum, channel_axis
        super().__init__(
            num_features, eps, create_scale, create_offset, scale_init, offset_init, rng_key, name
        )
        self.register_state("ema_mean", jnp.zeros((num_features,), jnp.float32))
        self.register_state("ema_var", jnp.ones((num_features,), jnp.float32))

    @property
    def feature_axis(self) -> int:
        return self.channel_axis

    def _check_rank(self, x: jax.Array) -> None:
        if x.ndim in self.input_ranks if self.input_ranks else x.ndim >= 2:
            return
        raise ValueError(
            RANK_MSG.format(
                cls=type(self).__name__,
                ranks=" or ".join(map(str, self.input_ranks or ())) or ">= 2",
                channel_axis=self.channel_axis,
                shape=x.shape,
                hint=" Use BatchNorm2D for images." if x.ndim == 4 else "",
            )
        )

    def _moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check_rank(x)
        axis = self.channel_axis % x.ndim
        if self.training:
            # Statistics in at least float32 (a bf16 mean of many values is coarse); the
            # normalization itself runs in the input's dtype.
            wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            axes = tuple(a for a in range(x.ndim) if a != axis)
            mean = jnp.mean(wide, axes)
            variance = jnp.mean(jnp.square(wide - along_axis(mean, x.ndim, axis)), axes)
            # Running statistics are bookkeeping, not part of the differentiated computation.
            m = self.momentum
            self.ema_mean = m * self.ema_mean + (1 - m) * jax.lax.stop_gradient(mean)
            self.ema_var = m * self.ema_var + (1 - m) * jax.lax.stop_gradient(variance)
        else:
            mean, variance = self.ema_mean, self.ema_var
        return tuple(along_axis(s.astype(x.dtype), x.ndim, axis) for s in (mean, variance))


class BatchNorm1D(BatchNorm):
    """`BatchNorm` for [batch, features] or [batch, length, features] inputs.

    Example:
        >>> bn = nn.BatchNorm1D(4).eval()
        >>> bn(jnp.ones((2, 4))).shape
        (2, 4)
    """

    input_ranks = (2, 3)


class BatchNorm2D(BatchNorm):
    """`BatchNorm` for [batch, height, width, channels] inputs (`channel_axis=1` for NCHW).

    Example:
        >>> bn = nn.BatchNorm2D(3).eval()
        >>> bn(jnp.ones((2, 5, 5, 3))).shape
        (2, 5, 5, 3)
    """

    input_ranks = (4,)
