"""Convolutions against `jax.lax` and a NumPy loop; pooling against NumPy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain.nn as nn

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _with_random_bias(conv):
    return conv.replace(bias=jnp.asarray(_randn(conv.out_features)))


def _numpy_conv1d(x, w, b, stride, rate, pad, groups):
    """Direct cross-correlation: x [N, L, Cin], w [K, Cin/groups, Cout], explicit (lo, hi) pad."""
    x = np.pad(x, ((0, 0), pad, (0, 0)))
    k, cin_g, cout = w.shape
    cout_g = cout // groups
    span = (k - 1) * rate + 1
    out_len = (x.shape[1] - span) // stride + 1
    y = np.zeros((x.shape[0], out_len, cout), np.float64)
    for t, o in itertools.product(range(out_len), range(cout)):
        g = o // cout_g
        for j in range(k):
            window = x[:, t * stride + j * rate, g * cin_g : (g + 1) * cin_g]
            y[:, t, o] += window @ w[j, :, o]
    return y + b


@pytest.mark.parametrize(
    ("stride", "rate", "padding", "groups"),
    [(1, 1, (0, 0), 1), (2, 1, (1, 2), 1), (1, 2, (2, 2), 2), (3, 2, (0, 1), 3)],
)
def test_conv1d_matches_a_direct_numpy_convolution(stride, rate, padding, groups):
    conv = _with_random_bias(
        nn.Conv1D(6, 6, 3, stride=stride, rate=rate, padding=(padding,), feature_group_count=groups)
    )
    x = _randn(2, 11, 6)
    expected = _numpy_conv1d(
        x, np.asarray(conv.weight), np.asarray(conv.bias), stride, rate, padding, groups
    )
    np.testing.assert_allclose(conv(x), expected, rtol=1e-4, atol=1e-5)


CONV2D_CASES = [
    dict(stride=1, rate=1, padding="SAME", groups=1, data_format="NHWC"),
    dict(stride=2, rate=1, padding="VALID", groups=1, data_format="NHWC"),
    dict(stride=(2, 1), rate=(1, 2), padding="SAME", groups=2, data_format="NHWC"),
    dict(stride=1, rate=2, padding=((1, 0), (2, 1)), groups=4, data_format="NCHW"),
    dict(stride=2, rate=1, padding=1, groups=1, data_format="NCHW"),
]


def _dimension_numbers(data_format):
    return (data_format, "HWIO", data_format)


def _input(data_format, channels=4):
    return _randn(2, 7, 6, channels) if data_format == "NHWC" else _randn(2, channels, 7, 6)


def _bias_along_channels(conv, ndim):
    shape = [1] * ndim
    shape[conv.data_format.index("C")] = conv.out_features
    return np.asarray(conv.bias).reshape(shape)


def _conv2d_for(cls, case):
    """A 4 -> 8 channel, (3, 2) kernel layer of `cls` with the settings of a CONV2D_CASES case."""
    return _with_random_bias(
        cls(
            4,
            8,
            (3, 2),
            stride=case["stride"],
            rate=case["rate"],
            padding=case["padding"],
            feature_group_count=case["groups"],
            data_format=case["data_format"],
        )
    )


@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d_matches_lax_conv_general_dilated(case):
    conv = _conv2d_for(nn.Conv2D, case)
    x = _input(case["data_format"])
    expected = jax.lax.conv_general_dilated(
        x,
        conv.weight,
        window_strides=conv.stride,
        padding=conv.padding,
        rhs_dilation=conv.rate,
        dimension_numbers=_dimension_numbers(case["data_format"]),
        feature_group_count=case["groups"],
    ) + _bias_along_channels(conv, 4)
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


def _lax_conv_transpose(conv, x):
    """`lax.conv_transpose` (which has no feature groups) applied group by group."""
    groups = conv.feature_group_count
    c = conv.data_format.index("C")
    xs = np.split(np.asarray(x), groups, axis=c)
    ws = np.split(np.asarray(conv.weight), groups, axis=-2)  # [*kernel, out, in / groups]
    n = len(conv.kernel_shape)
    spatial = "HW"[:n] if n == 2 else "W"
    ys = [
        jax.lax.conv_transpose(
            xg,
            wg,
            strides=conv.stride,
            padding=conv.padding,
            rhs_dilation=conv.rate,
            dimension_numbers=(conv.data_format, spatial + "OI", conv.data_format),
        )
        for xg, wg in zip(xs, ws)
    ]
    return np.concatenate(ys, axis=c) + _bias_along_channels(conv, x.ndim)


@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d_transpose_matches_lax_conv_transpose(case):
    conv = _conv2d_for(nn.Conv2DTranspose, case)
    x = _input(case["data_format"])
    np.testing.assert_allclose(conv(x), _lax_conv_transpose(conv, x), rtol=1e-5, atol=1e-5)


def test_conv1d_transpose_matches_lax_conv_transpose_under_jit():
    conv = _with_random_bias(nn.Conv1DTranspose(2, 3, 4, stride=3, padding="VALID"))
    x = _randn(2, 5, 2)
    y = jax.jit(lambda m, x: m(x))(conv, x)
    assert y.shape == (2, (5 - 1) * 3 + 4, 3)
    np.testing.assert_allclose(y, _lax_conv_transpose(conv, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("length", "stride", "rate", "padding"),
    [
        (8, 2, 1, "SAME"),
        (9, 2, 1, "VALID"),
        (9, 2, 1, ((1, 1),)),
        (10, 1, 2, "SAME"),
        (11, 3, 2, "VALID"),
    ],
)
def test_transposed_conv_is_the_gradient_of_the_forward_conv(length, stride, rate, padding):
    """Conv1DTranspose(padding=p, stride=s) is the transpose (VJP) of Conv1D(padding=p, stride=s)
    when given the forward kernel with its taps flipped ([k, in, out] of the forward layer is
    [k, out, in] of the transposed one). An explicit pair pads the dilated input: for k=3,
    rate=1 the forward padding (1, 1) transposes to k - 1 - 1 = 1 on each side."""
    forward = nn.Conv1D(3, 5, 3, stride=stride, rate=rate, padding=padding, with_bias=False)
    x = _randn(2, length, 3)
    y, vjp = jax.vjp(forward, x)
    cotangent = _randn(*y.shape)
    (expected,) = vjp(cotangent)

    transpose = nn.Conv1DTranspose(
        5, 3, 3, stride=stride, rate=rate, padding=padding, with_bias=False
    )
    flipped = forward.weight[::-1]
    np.testing.assert_allclose(
        transpose.replace(weight=flipped)(cotangent), expected, rtol=1e-5, atol=1e-5
    )


def test_conv_validates_configuration_and_input():
    with pytest.raises(ValueError, match="divisible by feature_group_count"):
        nn.Conv2D(4, 6, 3, feature_group_count=4)
    with pytest.raises(ValueError, match="data_format must be 'NHWC'"):
        nn.Conv2D(4, 6, 3, data_format="NWC")
    with pytest.raises(ValueError, match="padding must be"):
        nn.Conv2D(4, 6, 3, padding=(1, 2, 3))
    conv = nn.Conv2D(4, 6, 3, w_init=nn.initializers.zeros)
    with pytest.raises(
        ValueError, match=r"batched input of rank 4 .* 4 channels; got shape \(5, 5, 4\)"
    ):
        conv(jnp.ones((5, 5, 4)))
    with pytest.raises(ValueError, match="with 4 channels"):
        conv(jnp.ones((1, 5, 5, 3)))


def test_conv_weight_shape_counts_input_channels_per_group():
    zeros = nn.initializers.zeros  # only the shapes matter here
    assert nn.Conv2D(4, 6, (3, 2), feature_group_count=2, w_init=zeros).weight.shape == (3, 2, 2, 6)
    assert nn.Conv1DTranspose(4, 6, 5, w_init=zeros).weight.shape == (5, 6, 4)  # PAX's "WOI"


# ----------------------------------------------------------------------------------- pooling
def _numpy_pool(x, window, strides, pads, reduce):
    """x [N, H, W, C]; pads ((lo, hi), (lo, hi)); padded cells are excluded from the reduction."""
    xp = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=np.nan)
    out_h = (xp.shape[1] - window[0]) // strides[0] + 1
    out_w = (xp.shape[2] - window[1]) // strides[1] + 1
    y = np.zeros((x.shape[0], out_h, out_w, x.shape[3]), np.float32)
    for i, j in itertools.product(range(out_h), range(out_w)):
        patch = xp[
            :,
            i * strides[0] : i * strides[0] + window[0],
            j * strides[1] : j * strides[1] + window[1],
        ]
        y[:, i, j] = reduce(patch, axis=(1, 2))
    return y


def _same_pads(size, window, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize(
    ("window", "strides", "padding"),
    [
        ((2, 2), None, "VALID"),
        ((3, 2), (2, 1), "VALID"),
        ((3, 3), (2, 2), "SAME"),
        ((2, 3), (1, 2), ((1, 0), (1, 1))),
    ],
)
@pytest.mark.parametrize(("pool", "reduce"), [(nn.max_pool, np.nanmax), (nn.avg_pool, np.nanmean)])
def test_pooling_matches_numpy(window, strides, padding, pool, reduce):
    x = _randn(2, 7, 6, 3)
    steps = strides or window
    if padding == "SAME":
        pads = tuple(_same_pads(n, w, s) for n, w, s in zip(x.shape[1:3], window, steps))
    elif padding == "VALID":
        pads = ((0, 0), (0, 0))
    else:
        pads = padding
    expected = _numpy_pool(x, window, steps, pads, reduce)
    # PAX / Haiku spelling for NHWC: the trailing axes, 1 for the channels.
    trailing = None if strides is None else (*strides, 1)
    got = pool(x, (*window, 1), trailing, padding)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    full = None if strides is None else (1, *strides, 1)
    np.testing.assert_allclose(pool(x, (1, *window, 1), full, padding), expected, rtol=1e-5)


def test_pooling_channels_first_and_under_jit():
    x = _randn(2, 3, 6, 4)  # NCHW
    expected = np.moveaxis(
        _numpy_pool(np.moveaxis(x, 1, -1), (2, 2), (2, 2), ((0, 0), (0, 0)), np.max), -1, 1
    )
    pooled = jax.jit(lambda x: nn.max_pool(x, 2, channel_axis=1))(x)
    np.testing.assert_allclose(pooled, expected)
    avg = nn.avg_pool(x, (2, 2), channel_axis=1)
    np.testing.assert_allclose(
        avg, x.reshape(2, 3, 3, 2, 2, 2).mean(axis=(3, 5)), rtol=1e-5, atol=1e-6
    )


def test_max_pool_of_integers_and_bad_window():
    x = jnp.arange(8, dtype=jnp.int32).reshape(1, 8, 1)
    np.testing.assert_array_equal(nn.max_pool(x, 2, padding="SAME")[0, :, 0], [1, 3, 5, 7])
    with pytest.raises(ValueError, match="window_shape must be an int .* got \\(2, 2, 2, 2\\)"):
        nn.max_pool(x, (2, 2, 2, 2))


def test_a_per_spatial_window_that_pax_would_read_otherwise_is_refused():
    """PAX v0.4.3 / Haiku read (2, 2) on NHWC as the W and C axes; refuse, naming both fixes."""
    x = _randn(1, 4, 4, 3)
    with pytest.raises(ValueError, match=r"ambiguous.*\(2, 2, 1\).*\(1, 2, 2, 1\)"):
        nn.max_pool(x, (2, 2))
    with pytest.raises(ValueError, match="strides=\\(1, 1\\)|strides"):
        nn.avg_pool(x, 2, (2, 1))
    # Channels first: the trailing axes are the spatial ones, so both readings agree.
    nchw = np.moveaxis(x, -1, 1)
    np.testing.assert_allclose(
        nn.max_pool(nchw, (2, 2), channel_axis=1), np.moveaxis(nn.max_pool(x, 2), -1, 1)
    )


@pytest.mark.parametrize("pool", [nn.max_pool, nn.avg_pool])
def test_pools_differentiate_under_jit(pool):
    x = jnp.arange(32.0).reshape(1, 4, 4, 2)
    grad = jax.jit(jax.grad(lambda x: pool(x, 2).sum()))(x)
    assert grad.shape == x.shape
    # Each of the 8 outputs spreads a total gradient of 1 over its window.
    np.testing.assert_allclose(grad.sum(), 8.0, rtol=1e-6)
