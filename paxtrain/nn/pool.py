"""Max and average pooling over the spatial axes, on `jax.lax.reduce_window`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_MSG = """\
Pooling a rank-{ndim} input with channel_axis={channel_axis} pools over its {n} spatial axes \
(all but axis 0, the batch, and the channel axis); {what} must be an int or {n} ints, got \
{value!r}."""


def _per_axis(
    value: int | Sequence, x: jax.Array, channel_axis: int, what: str
) -> tuple[list[int], list]:
    """The spatial axes of `x`, and `value` given for each of them (an int applies to all)."""
    spatial = [a for a in range(x.ndim) if a not in (0, channel_axis % x.ndim)]
    values = [value] * len(spatial) if isinstance(value, int) else list(value)
    if len(values) != len(spatial):
        raise ValueError(
            WINDOW_MSG.format(
                ndim=x.ndim, channel_axis=channel_axis, n=len(spatial), what=what, value=value
            )
        )
    return spatial, values


def _pool(
    x: jax.Array,
    init: jax.Array,
    reduce: Callable,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: str | Sequence[tuple[int, int]],
    channel_axis: int,
) -> jax.Array:
    spatial, window = _per_axis(window_shape, x, channel_axis, "window_shape")
    _, stride = _per_axis(window if strides is None else strides, x, channel_axis, "strides")
    dims, steps = [1] * x.ndim, [1] * x.ndim
    for axis, w, s in zip(spatial, window, stride):
        dims[axis], steps[axis] = w, s
    if not isinstance(padding, str):
        _, pairs = _per_axis(padding, x, channel_axis, "padding")
        padding = [(0, 0)] * x.ndim
        for axis, pair in zip(spatial, pairs):
            padding[axis] = tuple(pair)
    return jax.lax.reduce_window(x, init, reduce, dims, steps, padding)


def max_pool(
    x: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    channel_axis: int = -1,
) -> jax.Array:
    """The maximum over each window of the spatial axes of a batched input.

    Args:
      x: [batch, *spatial, channels] (or channels at `channel_axis`).
      window_shape: window size, an int for every spatial axis or one per axis.
      strides: step between windows; defaults to `window_shape` (non-overlapping windows).
      padding: "VALID", "SAME", or one (low, high) pair per spatial axis. Padding never wins.
      channel_axis: the axis that is not pooled, besides the batch axis 0.

    Returns:
      The pooled array.

    Example:
        >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        >>> nn.max_pool(x, 2)[0, :, :, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """
    if jnp.issubdtype(x.dtype, jnp.floating):
        init = np.array(-np.inf, x.dtype)
    else:
        init = np.array(np.iinfo(x.dtype).min, x.dtype)
    return _pool(x, init, jax.lax.max, window_shape, strides, padding, channel_axis)


def avg_pool(
    x: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    channel_axis: int = -1,
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
    zero = np.array(0, x.dtype)
    sums = _pool(x, zero, jax.lax.add, window_shape, strides, padding, channel_axis)
    if padding == "VALID":
        count = 1
        for w in _per_axis(window_shape, x, channel_axis, "window_shape")[1]:
            count *= w
    else:
        ones = jnp.ones(x.shape, x.dtype)
        count = _pool(ones, zero, jax.lax.add, window_shape, strides, padding, channel_axis)
    return sums / count
