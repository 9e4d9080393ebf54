"""Max and average pooling over the spatial axes, on `jax.lax.reduce_window`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_MSG = """\
Pooling a rank-{ndim} input with channel_axis={channel_axis}: {what} must be an int (every axis \
but the batch axis 0 and the channel axis), {ndim} ints (every axis) or fewer ints for the \
trailing axes (Haiku and PAX v0.4.3); got {value!r}."""

AMBIGUOUS_MSG = """\
Pooling a rank-{ndim} input with channel_axis={channel_axis}: {what}={value!r} is ambiguous. \
PAX v0.4.3 and Haiku apply a short tuple to the trailing axes, which include the channel axis \
here; write it for the trailing axes with 1 for the channels ({trailing!r}) or give every axis \
({full!r})."""


def _spatial_axes(x: jax.Array, channel_axis: int | None) -> list[int]:
    # channel_axis=None (PAX's spelling): no channel axis, every axis but the batch is pooled.
    channel = None if channel_axis is None else channel_axis % x.ndim
    return [a for a in range(1, x.ndim) if a != channel]


def _full_rank(value: int | Sequence, x: jax.Array, channel_axis: int | None, what: str) -> list:
    """`value` given for every axis of `x`, as PAX v0.4.3 (and Haiku) read a window or stride.

    An int applies to the spatial axes (all but 0 and `channel_axis`); a tuple applies to the
    trailing axes, the leading ones getting 1. A tuple with one entry per spatial axis that
    does not end at the channel axis would mean different axes to PAX and to a reader counting
    spatial axes, so it is refused with both spellings.
    """
    spatial = _spatial_axes(x, channel_axis)
    if isinstance(value, int):
        return [value if a in spatial else 1 for a in range(x.ndim)]
    values = list(value)
    if len(values) > x.ndim:
        raise ValueError(
            WINDOW_MSG.format(ndim=x.ndim, channel_axis=channel_axis, what=what, value=value)
        )
    full = [1] * (x.ndim - len(values)) + values
    if len(values) == len(spatial):
        per_spatial = [1] * x.ndim
        for a, v in zip(spatial, values):
            per_spatial[a] = v
        if per_spatial != full:
            raise ValueError(
                AMBIGUOUS_MSG.format(
                    ndim=x.ndim,
                    channel_axis=channel_axis,
                    what=what,
                    value=value,
                    trailing=tuple(per_spatial[1:]),
                    full=tuple(per_spatial),
                )
            )
    return full


def _pool(
    x: jax.Array,
    init: jax.Array,
    reduce: Callable,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: str | Sequence[tuple[int, int]],
    channel_axis: int,
) -> jax.Array:
    dims = _full_rank(window_shape, x, channel_axis, "window_shape")
    steps = dims if strides is None else _full_rank(strides, x, channel_axis, "strides")
    if not isinstance(padding, str):
        pairs = iter(padding)
        padding = [
            tuple(next(pairs)) if a in _spatial_axes(x, channel_axis) else (0, 0)
            for a in range(x.ndim)
        ]
    return jax.lax.reduce_window(x, init, reduce, dims, steps, padding)


def max_pool(
    value: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    channel_axis: int | None = -1,
) -> jax.Array:
    """The maximum over each window of the spatial axes of a batched input.

    Args:
      value: [batch, *spatial, channels] (or channels at `channel_axis`); PAX's name.
      window_shape: window size: an int for every spatial axis, or as PAX v0.4.3 and Haiku a
        tuple for the trailing axes (`(2, 2, 1)` for NHWC) or for every axis (`(1, 2, 2, 1)`).
      strides: step between windows, given like `window_shape`; defaults to `window_shape`
        (non-overlapping windows).
      padding: "VALID", "SAME", or one (low, high) pair per spatial axis. Padding never wins.
      channel_axis: the axis that is not pooled, besides the batch axis 0; None pools every
        axis but the batch axis (as in PAX).

    Returns:
      The pooled array.

    Example:
        >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        >>> nn.max_pool(x, 2)[0, :, :, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """
    x = value
    if jnp.issubdtype(x.dtype, jnp.floating):
        init = np.array(-np.inf, x.dtype)
    else:
        init = np.array(np.iinfo(x.dtype).min, x.dtype)
    return _pool(x, init, jax.lax.max, window_shape, strides, padding, channel_axis)


def avg_pool(
    value: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    channel_axis: int | None = -1,
) -> jax.Array:
    """The mean over each window of the spatial axes of a batched input.

    Arguments as for `max_pool`. Windows that overlap the padding average only the real
    elements, so borders are not pulled towards zero.

    Returns:
      The pooled array.

    Example:
        >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        >>> nn.avg_pool(x, 2)[0, :, :, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
    """
    x = value
    zero = np.array(0, x.dtype)
    sums = _pool(x, zero, jax.lax.add, window_shape, strides, padding, channel_axis)
    if padding == "VALID":
        count = int(np.prod(_full_rank(window_shape, x, channel_axis, "window_shape")))
    else:
        ones = jnp.ones(x.shape, x.dtype)
        count = _pool(ones, zero, jax.lax.add, window_shape, strides, padding, channel_axis)
    return sums / count
