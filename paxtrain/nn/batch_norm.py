"""`BatchNorm`: normalization with batch statistics in training, running averages in eval.

Arguments and running statistics follow PAX v0.4.3: `BatchNorm2D(num_channels, create_scale,
create_offset, decay_rate, eps, data_format)`, and the running mean and variance are `EMA`
submodules (`bn.ema_mean.averages`) that ignore their zero start (`debias=True`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from paxtrain.nn.ema import EMA
from paxtrain.nn.initializers import Initializer
from paxtrain.nn.normalization import PARAM_SHAPE_MSG, _Normalization, along_axis

RANK_MSG = """\
{cls} expects inputs of rank {ranks} (batch first, channels at axis {channel_axis}); got shape \
{shape}.{hint}"""

DATA_FORMAT_MSG = """\
{cls}: data_format must be one of {choices}; got {data_format!r}."""


class BatchNorm(_Normalization):
    """Batch normalization (Ioffe & Szegedy, 2015) over every axis but the channel axis.

    In training mode it normalizes with the statistics of the batch (the biased variance) and
    folds them into the running averages `ema_mean`, `ema_var` (`EMA` modules):
    `average = decay_rate * average + (1 - decay_rate) * batch_stat`, the first training call
    setting them to its statistics. That update is a mutation, so call it through
    `pax.purecall` / `pax.module_and_value`. In eval mode (`bn.eval()`) it normalizes with the
    running averages and changes nothing.

    `scale`, `offset` and the running averages have shape [num_channels]; `BatchNorm1D` and
    `BatchNorm2D` keep PAX's broadcast shape instead ([1, 1, 1, C] for "NHWC", [1, C, 1, 1] for
    "NCHW"), so PAX's weight-conversion code runs unchanged. A value of another shape given by
    `replace` is refused at the call, never broadcast.

    Example:
        >>> bn = nn.BatchNorm(2, decay_rate=0.5)
        >>> bn, y = pax.purecall(bn, jnp.array([[0.0, 2.0], [2.0, 4.0]]))
        >>> bn.ema_mean.averages.tolist()
        [1.0, 3.0]
        >>> y.round(3).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
    """

    input_ranks: tuple[int, ...] | None = None  # None: any rank >= 2
    data_formats: tuple[str, ...] = ("N...C", "NC...")

    def __init__(
        self,
        num_channels: int,
        create_scale: bool = True,
        create_offset: bool = True,
        decay_rate: float = 0.9,
        eps: float = 1e-5,
        data_format: str | None = None,
        *,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        cls = type(self).__name__
        data_format = data_format or self.data_formats[0]
        if data_format not in self.data_formats:
            raise ValueError(
                DATA_FORMAT_MSG.format(cls=cls, choices=self.data_formats, data_format=data_format)
            )
        if not 0 <= decay_rate <= 1:
            raise ValueError(f"{cls}: decay_rate must be in [0, 1]; got {decay_rate}.")
        self.num_channels, self.decay_rate, self.data_format = num_channels, decay_rate, data_format
        super().__init__(
            num_channels, eps, create_scale, create_offset, scale_init, offset_init, rng_key, name
        )
        zeros = jnp.zeros(self._param_shape(), jnp.float32)
        self.ema_mean = EMA(zeros, decay_rate, debias=True)
        self.ema_var = EMA(jnp.zeros_like(zeros), decay_rate, debias=True)

    @property
    def feature_axis(self) -> int:
        return 1 if self.data_format[1] == "C" else -1

    def _param_shape(self) -> tuple[int, ...]:
        if self.input_ranks is None:
            return (self.num_channels,)
        # PAX's shape: the rank of its input, ones but for the channel axis.
        shape = [1] * max(self.input_ranks)
        shape[self.feature_axis] = self.num_channels
        return tuple(shape)

    def _check_rank(self, x: jax.Array) -> None:
        if x.ndim in self.input_ranks if self.input_ranks else x.ndim >= 2:
            return
        raise ValueError(
            RANK_MSG.format(
                cls=type(self).__name__,
                ranks=" or ".join(map(str, self.input_ranks or ())) or ">= 2",
                channel_axis=self.feature_axis,
                shape=x.shape,
                hint=" Use BatchNorm2D for images." if x.ndim == 4 else "",
            )
        )

    def _moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check_rank(x)
        axis = self.feature_axis % x.ndim
        if self.training:
            # Statistics in at least float32 (a bf16 mean of many values is coarse); the
            # normalization itself runs in the input's dtype.
            wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            axes = tuple(a for a in range(x.ndim) if a != axis)
            mean = jnp.mean(wide, axes)
            variance = jnp.mean(jnp.square(wide - along_axis(mean, x.ndim, axis)), axes)
            # Running statistics are bookkeeping, not part of the differentiated computation.
            self.ema_mean(jax.lax.stop_gradient(mean).reshape(self._param_shape()))
            self.ema_var(jax.lax.stop_gradient(variance).reshape(self._param_shape()))
        else:
            mean, variance = (self._own_average(ema) for ema in (self.ema_mean, self.ema_var))
        return tuple(
            along_axis(s.reshape(-1).astype(x.dtype), x.ndim, axis) for s in (mean, variance)
        )

    def _own_average(self, ema: EMA) -> jax.Array:
        if ema.averages.shape != self._param_shape():
            attr = "ema_mean" if ema is self.ema_mean else "ema_var"
            raise ValueError(
                PARAM_SHAPE_MSG.format(
                    cls=type(self).__name__,
                    attr=f"{attr}.averages",
                    got=tuple(ema.averages.shape),
                    expected=self._param_shape(),
                )
            )
        return ema.averages


class BatchNorm1D(BatchNorm):
    """`BatchNorm` for [batch, features] or [batch, length, features] inputs ("NCW": channels
    at axis 1).

    Example:
        >>> bn = nn.BatchNorm1D(4).eval()
        >>> bn(jnp.ones((2, 4))).shape
        (2, 4)
    """

    input_ranks = (2, 3)
    data_formats = ("NWC", "NCW")


class BatchNorm2D(BatchNorm):
    """`BatchNorm` for [batch, height, width, channels] inputs ("NCHW": channels at axis 1).

    Example:
        >>> bn = nn.BatchNorm2D(3).eval()
        >>> bn(jnp.ones((2, 5, 5, 3))).shape
        (2, 5, 5, 3)
    """

    input_ranks = (4,)
    data_formats = ("NHWC", "NCHW")
