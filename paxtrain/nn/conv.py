"""Convolutions: one N-d implementation on `jax.lax.conv_general_dilated`.

`Conv1D`, `Conv2D`, `Conv1DTranspose` and `Conv2DTranspose` only fix the number of spatial
dimensions and the direction. A transposed convolution is the same call with the stride moved to
the input (`lhs_dilation`, a fractionally strided convolution) and the padding converted, as
`jax.lax.conv_transpose` does; doing it here keeps `feature_group_count` available to both.

Positional arguments follow PAX v0.4.3 (`in_features, out_features, kernel_shape, stride, rate,
padding, with_bias, w_init, b_init, data_format`; the transposed layers have no `rate` there);
everything PAX did not have is keyword-only, so a PAX call means what it meant in PAX or fails.

Kernels are laid out as in PAX: `[*kernel_shape, in_features // feature_group_count,
out_features]` ("HWIO") for a convolution, `[*kernel_shape, out_features, in_features //
feature_group_count]` ("HWOI") for a transposed one, not flipped, as
`jax.lax.conv_transpose(..., transpose_kernel=False)` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import paxtrain as pax
from paxtrain.nn.initializers import Initializer, compiled, fan_in_normal, split_rng_key, zeros
from paxtrain.nn.normalization import along_axis
from paxtrain.nn.sequential import Chainable

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]

_SPATIAL_LETTERS = {1: "W", 2: "HW", 3: "DHW"}

GROUPS_MSG = """\
{cls}: in_features ({in_features}) and out_features ({out_features}) must both be divisible by \
feature_group_count ({groups}); each group maps in_features/groups inputs to out_features/groups \
outputs."""

DATA_FORMAT_MSG = """\
{cls}: data_format must be {channels_last!r} (channels last, the default) or \
{channels_first!r} (channels first); got {data_format!r}."""

PADDING_MSG = """\
{cls}: padding must be "SAME", "VALID", an int (the same on both sides of every spatial \
dimension), {n} ints (one per spatial dimension) or {n} (low, high) pairs; got {padding!r}."""

INPUT_MSG = """\
{cls} expects a batched input of rank {rank} in {data_format} layout with {in_features} \
channels; got shape {shape}. Add a batch axis with `x[None]` for a single example."""


# `fan_in_normal` for an "HWOI" kernel: the fan-in is the receptive field times the last axis,
# PAX's `prod(kernel_shape) * in_features`.
_fan_in_normal_oi: Initializer = compiled(
    jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=-2)
)


def _tuple_of(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _normalize_padding(padding: Padding, n: int, cls: str) -> str | tuple[tuple[int, int], ...]:
    if isinstance(padding, str) and padding.upper() in ("SAME", "VALID"):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == n:
        if all(isinstance(p, int) for p in padding):
            return tuple((p, p) for p in padding)
        if all(isinstance(p, Sequence) and len(p) == 2 for p in padding):
            return tuple((int(lo), int(hi)) for lo, hi in padding)
    raise ValueError(PADDING_MSG.format(cls=cls, n=n, padding=padding))


def _transpose_padding(
    kernel_size: int, stride: int, rate: int, padding: str | tuple[int, int]
) -> tuple[int, int]:
    """Padding of the dilated input of a transposed convolution, as `jax.lax.conv_transpose`.

    "SAME" and "VALID" give the transpose of a forward convolution with that padding; a
    (low, high) pair is the padding of the dilated input itself, used as given (PAX and
    `jax.lax.conv_transpose`'s default, not PyTorch's `padding`).
    """
    if not isinstance(padding, str):
        return padding
    k = (kernel_size - 1) * rate + 1  # the dilated kernel's extent
    if padding == "SAME":
        total = k + stride - 2
        low = k - 1 if stride > k - 1 else int(np.ceil(total / 2))
        return low, total - low
    return k - 1, stride - 1 + max(k - stride, 0)


class _ConvND(Chainable, pax.Module):
    """An N-d convolution; subclasses set `num_spatial_dims` and `transpose`.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_shape: kernel size, an int for every spatial dimension or one per dimension.
      stride: step of the kernel (int or per dimension); for a transposed convolution, the
        factor by which the output is larger.
      rate: kernel dilation (atrous rate), int or per dimension; keyword-only for the
        transposed layers (PAX's had none).
      padding: "SAME", "VALID", an int (both sides of every spatial dimension), one int per
        dimension, or one (low, high) pair per dimension. For a transposed convolution an int
        or pair pads the stride-dilated input, as in `jax.lax.conv_transpose` and PAX.
      with_bias: whether to add a learned bias per output channel.
      w_init, b_init: initializers of the kernel and the bias.
      data_format: channels last ("NWC", "NHWC", the default) or channels first ("NCW",
        "NCHW").
      feature_group_count: (keyword-only) splits the channels into this many independent
        groups (`in_features` for a depthwise convolution).
      rng_key: key for the initializers; defaults to `pax.next_rng_key()`.
      name: optional module name.
    """

    num_spatial_dims: int
    transpose: bool

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_shape: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        rate: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        data_format: str | None = None,
        *,
        feature_group_count: int = 1,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        n, cls = self.num_spatial_dims, type(self).__name__
        spatial = _SPATIAL_LETTERS[n]
        channels_last, channels_first = f"N{spatial}C", f"NC{spatial}"
        data_format = data_format or channels_last
        if data_format not in (channels_last, channels_first):
            raise ValueError(
                DATA_FORMAT_MSG.format(
                    cls=cls,
                    channels_last=channels_last,
                    channels_first=channels_first,
                    data_format=data_format,
                )
            )
        if in_features % feature_group_count or out_features % feature_group_count:
            raise ValueError(
                GROUPS_MSG.format(
                    cls=cls,
                    in_features=in_features,
                    out_features=out_features,
                    groups=feature_group_count,
                )
            )
        self.in_features, self.out_features = in_features, out_features
        self.kernel_shape = _tuple_of(kernel_shape, n)
        self.stride = _tuple_of(stride, n)
        self.rate = _tuple_of(rate, n)
        self.padding = _normalize_padding(padding, n, cls)
        self.feature_group_count = feature_group_count
        self.with_bias = with_bias
        self.data_format = data_format

        w_key, b_key = split_rng_key(rng_key, 2)
        group_in = in_features // feature_group_count
        channels = (out_features, group_in) if self.transpose else (group_in, out_features)
        w_shape = (*self.kernel_shape, *channels)
        default_init = _fan_in_normal_oi if self.transpose else fan_in_normal
        self.register_parameter("weight", (w_init or default_init)(w_key, w_shape, jnp.float32))
        bias = (b_init or zeros)(b_key, (out_features,), jnp.float32) if with_bias else None
        self.register_parameter("bias", bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        n = self.num_spatial_dims
        channel_axis = self.data_format.index("C")
        if x.ndim != n + 2 or x.shape[channel_axis] != self.in_features:
            raise ValueError(
                INPUT_MSG.format(
                    cls=type(self).__name__,
                    rank=n + 2,
                    data_format=self.data_format,
                    in_features=self.in_features,
                    shape=x.shape,
                )
            )
        if self.transpose:
            # Fractionally strided: the stride spreads the input apart instead of skipping.
            paddings = (self.padding,) * n if isinstance(self.padding, str) else self.padding
            padding = tuple(
                map(_transpose_padding, self.kernel_shape, self.stride, self.rate, paddings)
            )
            strides, lhs_dilation = (1,) * n, self.stride
        else:
            strides, lhs_dilation, padding = self.stride, (1,) * n, self.padding
        kernel_format = _SPATIAL_LETTERS[n] + ("OI" if self.transpose else "IO")
        y = jax.lax.conv_general_dilated(
            x,
            self.weight,
            window_strides=strides,
            padding=padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=self.rate,
            dimension_numbers=(self.data_format, kernel_format, self.data_format),
            feature_group_count=self.feature_group_count,
        )
        return y if self.bias is None else y + along_axis(self.bias, y.ndim, channel_axis)


class Conv1D(_ConvND):
    """1-d convolution over inputs [batch, width, channels] ("NWC", or "NCW" channels first).

    The arguments are described on `_ConvND`.

    Example:
        >>> conv = nn.Conv1D(3, 8, kernel_shape=3, stride=2)
        >>> conv(jnp.ones((1, 10, 3))).shape
        (1, 5, 8)
    """

    num_spatial_dims = 1
    transpose = False


class Conv2D(_ConvND):
    """2-d convolution over inputs [batch, height, width, channels] ("NHWC", or "NCHW").

    The arguments are described on `_ConvND`; per-dimension tuples have length 2.

    Example:
        >>> conv = nn.Conv2D(3, 8, kernel_shape=(3, 3), padding="VALID")
        >>> conv
        Conv2D(in_features=3, out_features=8, kernel_shape=(3, 3), stride=(1, 1), rate=(1, 1), \
padding='VALID', feature_group_count=1, with_bias=True, data_format='NHWC')
        >>> conv(jnp.ones((1, 5, 5, 3))).shape
        (1, 3, 3, 8)
    """

    num_spatial_dims = 2
    transpose = False


class _ConvTransposeND(_ConvND):
    """`_ConvND` in the transposed direction, with PAX's positional order: no `rate` there."""

    transpose = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_shape: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        data_format: str | None = None,
        *,
        rate: int | Sequence[int] = 1,
        feature_group_count: int = 1,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(
            in_features,
            out_features,
            kernel_shape,
            stride,
            rate,
            padding,
            with_bias,
            w_init,
            b_init,
            data_format,
            feature_group_count=feature_group_count,
            rng_key=rng_key,
            name=name,
        )


class Conv1DTranspose(_ConvTransposeND):
    """Transposed 1-d convolution: the transpose of `Conv1D` with the same stride and padding.

    With "SAME" padding the output is `stride` times longer than the input.

    Example:
        >>> conv = nn.Conv1DTranspose(3, 8, kernel_shape=3, stride=2)
        >>> conv(jnp.ones((1, 5, 3))).shape
        (1, 10, 8)
    """

    num_spatial_dims = 1


class Conv2DTranspose(_ConvTransposeND):
    """Transposed 2-d convolution: the transpose of `Conv2D` with the same stride and padding.

    Example:
        >>> conv = nn.Conv2DTranspose(3, 8, kernel_shape=3, stride=2)
        >>> conv(jnp.ones((1, 4, 4, 3))).shape
        (1, 8, 8, 8)
    """

    num_spatial_dims = 2
