"""PAX v0.4.3 layer calls with positional arguments mean what they meant in PAX.

Each call spells the arguments positionally in PAX's order (from PAX's constructors) and the
result is checked against a NumPy computation of PAX's definition. One positional argument more
than PAX took is a TypeError: anything paxtrain adds is keyword-only.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _np(x):
    return np.asarray(x, np.float64)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_linear_in_out_with_bias():
    layer = nn.Linear(3, 4, False)
    x = _randn(2, 3)
    assert layer.bias is None
    np.testing.assert_allclose(layer(x), x @ _np(layer.weight), rtol=1e-5, atol=1e-6)


def _np_conv(x, w, stride, rate, pads):
    """Cross-correlation, x [N, *spatial, C], w [*k, C, O], explicit pads per spatial dim."""
    x = np.pad(_np(x), ((0, 0), *pads, (0, 0)))
    k = w.shape[:-2]
    spans = [(kk - 1) * r + 1 for kk, r in zip(k, rate)]
    out = [(n - s) // st + 1 for n, s, st in zip(x.shape[1:-1], spans, stride)]
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    for pos in itertools.product(*map(range, out)):
        for tap in itertools.product(*map(range, k)):
            idx = tuple(p * st + t * r for p, st, t, r in zip(pos, stride, tap, rate))
            y[(slice(None), *pos)] += x[(slice(None), *idx)] @ _np(w[tap])
    return y


def test_conv1d_positional_stride_rate_padding_with_bias():
    # PAX: in_features, out_features, kernel_shape, stride, rate, padding, with_bias
    conv = nn.Conv1D(3, 4, 3, 2, 1, "VALID", False)
    assert conv.bias is None and conv.feature_group_count == 1
    x = _randn(2, 9, 3)
    np.testing.assert_allclose(conv(x), _np_conv(x, conv.weight, (2,), (1,), [(0, 0)]), atol=1e-5)


def test_conv2d_positional_up_to_data_format():
    init = jax.nn.initializers.normal(1.0)
    bias_init = jax.nn.initializers.constant(0.5)
    # PAX: ..., padding, with_bias, w_init, b_init, data_format
    conv = nn.Conv2D(3, 4, (3, 2), 1, 2, "SAME", True, init, bias_init, "NCHW")
    assert conv.data_format == "NCHW" and conv.rate == (2, 2)
    x = _randn(2, 3, 7, 6)
    # SAME with rate 2: dilated extents 5 and 3 -> pads (2, 2) and (1, 1).
    expected = _np_conv(np.moveaxis(x, 1, -1), conv.weight, (1, 1), (2, 2), [(2, 2), (1, 1)])
    np.testing.assert_allclose(conv(x), np.moveaxis(expected + 0.5, -1, 1), atol=1e-4)


def _np_conv_transpose(x, w, stride):
    """PAX's ConvTranspose with VALID padding: w [*k, O, I]; each input scatters a flipped
    kernel (jax.lax.conv_transpose with transpose_kernel=False)."""
    k = w.shape[:-2]
    spatial = x.shape[1:-1]
    out = [(n - 1) * s + kk for n, s, kk in zip(spatial, stride, k)]
    y = np.zeros((x.shape[0], *out, w.shape[-2]))
    for pos in itertools.product(*map(range, spatial)):
        for tap in itertools.product(*map(range, k)):
            idx = tuple(p * s + kk - 1 - t for p, s, kk, t in zip(pos, stride, k, tap))
            y[(slice(None), *idx)] += _np(x[(slice(None), *pos)]) @ _np(w[tap]).T
    return y


def test_conv_transpose_positional_order_has_no_rate():
    # PAX: in_features, out_features, kernel_shape, stride, padding, with_bias, ...
    conv1 = nn.Conv1DTranspose(3, 4, 3, 2, "VALID", False)
    assert conv1.weight.shape == (3, 4, 3) and conv1.bias is None  # PAX's "WOI" kernel
    x = _randn(2, 5, 3)
    np.testing.assert_allclose(conv1(x), _np_conv_transpose(x, conv1.weight, (2,)), atol=1e-5)

    conv2 = nn.Conv2DTranspose(3, 2, 2, 2, "VALID", True, None, None, "NHWC")
    x = _randn(1, 3, 2, 3)
    expected = _np_conv_transpose(x, conv2.weight, (2, 2)) + _np(conv2.bias)
    np.testing.assert_allclose(conv2(x), expected, atol=1e-5)


def test_conv_transpose_explicit_padding_pads_the_dilated_input_as_in_pax():
    conv = nn.Conv1DTranspose(2, 3, 3, 2, [(1, 0)])
    x = _randn(2, 4, 2)
    expected = jax.lax.conv_transpose(
        x, conv.weight, (2,), [(1, 0)], dimension_numbers=("NWC", "WOI", "NWC")
    )
    np.testing.assert_allclose(conv(x), expected + conv.bias, atol=1e-5)


def _np_standardize(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


def _random_affine(norm):
    return norm.replace(
        scale=jnp.asarray(1 + _randn(*norm.scale.shape)),
        offset=jnp.asarray(_randn(*norm.offset.shape)),
    )


def test_layer_norm_num_channels_axis_create_scale_create_offset_eps():
    norm = _random_affine(nn.LayerNorm(3, -1, True, True))  # the example
    assert norm.eps == 1e-5
    x = _randn(2, 5, 3) * 4 + 1
    expected = _np_standardize(_np(x), (-1,), 1e-5) * _np(norm.scale) + _np(norm.offset)
    np.testing.assert_allclose(norm(x), expected, rtol=1e-5, atol=1e-5)

    bare = nn.LayerNorm(3, slice(1, None), False, False, 0.5)
    assert bare.scale is None and bare.offset is None
    np.testing.assert_allclose(bare(x), _np_standardize(_np(x), (1, 2), 0.5), atol=1e-5)


def test_group_norm_groups_num_channels_axis_flags_eps_data_format():
    norm = nn.GroupNorm(2, 4, slice(1, None), True, True, 1e-3, None, None, "channels_first")
    norm = _random_affine(norm)
    x = _randn(2, 4, 3, 3) * np.array([1, 5, 0.5, 2], np.float32)[:, None, None]
    grouped = _np(x).reshape(2, 2, 2, 3, 3)
    y = _np_standardize(grouped, (2, 3, 4), 1e-3).reshape(x.shape)
    expected = y * _np(norm.scale)[:, None, None] + _np(norm.offset)[:, None, None]
    np.testing.assert_allclose(norm(x), expected, rtol=1e-4, atol=1e-4)

    # An axis list: statistics over the channels of a group only (axis -1 is the channel axis).
    per_position = nn.GroupNorm(2, 4, -1, False, False)
    x = _randn(2, 3, 4)
    expected = _np_standardize(_np(x).reshape(2, 3, 2, 2), (-1,), 1e-5).reshape(x.shape)
    np.testing.assert_allclose(per_position(x), expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_num_channels_flags_decay_rate_eps_data_format():
    bn = nn.BatchNorm1D(3, True, True, 0.9)  # the example
    assert (bn.decay_rate, bn.eps, bn.data_format) == (0.9, 1e-5, "NWC")
    bn = _random_affine(bn)
    x = _randn(4, 5, 3) * 3 + 2
    bn2, y = pax.purecall(bn, x)
    expected = _np_standardize(_np(x), (0, 1), 1e-5) * _np(bn.scale) + _np(bn.offset)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    x2 = _randn(4, 5, 3)
    bn3, _ = pax.purecall(bn2, x2)
    # PAX's shape for the running averages: [1, 1, C].
    mean = 0.9 * _np(x).mean((0, 1), keepdims=True) + 0.1 * _np(x2).mean((0, 1), keepdims=True)
    var = 0.9 * _np(x).var((0, 1), keepdims=True) + 0.1 * _np(x2).var((0, 1), keepdims=True)
    np.testing.assert_allclose(bn3.ema_mean.averages, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn3.ema_var.averages, var, rtol=1e-5, atol=1e-6)
    x3 = _randn(2, 5, 3)
    expected = (_np(x3) - mean) / np.sqrt(var + 1e-5) * _np(bn.scale) + _np(bn.offset)
    np.testing.assert_allclose(bn3.eval()(x3), expected, rtol=1e-5, atol=1e-5)

    bn2d = nn.BatchNorm2D(3, False, False, 0.5, 1e-3, "NCHW")
    assert bn2d.scale is None and bn2d.offset is None
    x = _randn(2, 3, 4, 4)
    _, y = pax.purecall(bn2d, x)
    np.testing.assert_allclose(y, _np_standardize(_np(x), (0, 2, 3), 1e-3), atol=1e-4)


def test_embed_vocab_size_embed_dim_w_init():
    embed = nn.Embed(5, 3, jax.nn.initializers.normal(1.0))
    ids = np.array([[0, 4], [2, 2]])
    np.testing.assert_array_equal(embed(ids), np.asarray(embed.weight)[ids])


def test_lstm_input_dim_hidden_dim_w_init_forget_gate_bias():
    lstm = nn.LSTM(3, 4, None, 0.5)
    assert lstm.forget_gate_bias == 0.5
    assert nn.LSTM(3, 4).forget_gate_bias == 0.0  # PAX's default
    x, h, c = _randn(2, 3), _randn(2, 4), _randn(2, 4)
    state, y = lstm(nn.LSTMState(h, c), x)
    gates = (
        x @ _np(lstm.input_to_gates.weight)
        + _np(lstm.input_to_gates.bias)
        + h @ _np(lstm.hidden_to_gates.weight)
    )
    i, f, g, o = np.split(gates, 4, axis=-1)
    new_c = _sigmoid(f + 0.5) * c + _sigmoid(i) * np.tanh(g)
    np.testing.assert_allclose(state.cell, new_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, _sigmoid(o) * np.tanh(new_c), rtol=1e-5, atol=1e-6)


def test_dropout_rate_and_pax_mask():
    drop = nn.Dropout(0.3)
    assert drop.dropout_rate == 0.3
    x = jnp.arange(1.0, 101.0)
    new, y = pax.purecall(drop, x)
    next_key, mask_key = jax.random.split(drop.rng_key)
    dropped = np.asarray(jax.random.bernoulli(mask_key, 0.3, x.shape))  # PAX: True = dropped
    np.testing.assert_allclose(y, np.where(dropped, 0.0, _np(x) / 0.7), rtol=1e-6)
    np.testing.assert_array_equal(new.rng_key, next_key)


def test_multi_head_attention_num_heads_key_size_w_init_scale():
    mha = nn.MultiHeadAttention(2, 3, 1.0)
    assert mha.model_dim == mha.model_size == 6  # PAX: model_size = num_heads * key_size
    assert mha.query_projection is mha.query_proj
    x = _randn(2, 4, 6)

    def heads(linear, x):
        return (x @ _np(linear.weight) + _np(linear.bias)).reshape(2, 4, 2, 3)

    q, k, v = (heads(p, x) for p in (mha.query_proj, mha.key_proj, mha.value_proj))
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(3)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attn = np.einsum("bhts,bshd->bthd", weights, v).reshape(2, 4, 6)
    expected = attn @ _np(mha.output_proj.weight) + _np(mha.output_proj.bias)
    np.testing.assert_allclose(mha(x, x, x), expected, rtol=1e-4, atol=1e-5)


def test_ema_initial_value_decay_rate_debias_default_false():
    ema = nn.EMA(jnp.array([1.0, 2.0]), 0.9)  # PAX: debias=False
    ema, avg = pax.purecall(ema, jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(avg, [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 4], rtol=1e-6)
    debiased = nn.EMA(jnp.array([1.0, 2.0]), 0.9, True)
    debiased, avg = pax.purecall(debiased, jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(avg, [3.0, 4.0], rtol=1e-6)


ZEROS = jax.nn.initializers.zeros


@pytest.mark.parametrize(
    ("make", "pax_positionals"),
    [
        (lambda *a: nn.Linear(*a), (3, 4, True, None, None)),
        (lambda *a: nn.Conv1D(*a), (3, 4, 3, 1, 1, "SAME", True, None, None, "NWC")),
        (lambda *a: nn.Conv2D(*a), (3, 4, 3, 1, 1, "SAME", True, None, None, "NHWC")),
        (lambda *a: nn.Conv1DTranspose(*a), (3, 4, 3, 1, "SAME", True, None, None, "NWC")),
        (lambda *a: nn.Conv2DTranspose(*a), (3, 4, 3, 1, "SAME", True, None, None, "NHWC")),
        (lambda *a: nn.LayerNorm(*a), (3, -1, True, True, 1e-5, None, None)),
        (
            lambda *a: nn.GroupNorm(*a),
            (2, 4, slice(1, None), True, True, 1e-5, None, None, "channels_last"),
        ),
        (lambda *a: nn.BatchNorm1D(*a), (3, True, True, 0.9, 1e-5, "NWC")),
        (lambda *a: nn.BatchNorm2D(*a), (3, True, True, 0.9, 1e-5, "NHWC")),
        (lambda *a: nn.Embed(*a), (5, 3, None)),
        (lambda *a: nn.LSTM(*a), (3, 4, None, 0.0)),
        (lambda *a: nn.GRU(*a), (3, 4)),
        (lambda *a: nn.Dropout(*a), (0.5,)),
        (lambda *a: nn.MultiHeadAttention(*a), (2, 3, 1.0)),
        (lambda *a: nn.EMA(*a), (jnp.zeros(2), 0.9, False)),
        (lambda *a: nn.RngSeq(*a), (0, None)),
    ],
)
def test_pax_positionals_are_accepted_and_one_more_is_a_type_error(make, pax_positionals):
    make(*pax_positionals)
    with pytest.raises(TypeError, match="positional argument"):
        make(*pax_positionals, None)


def _np_pool(x, window, strides, reduce):
    """VALID pooling over every axis with full-rank window and strides."""
    out = [(n - w) // s + 1 for n, w, s in zip(x.shape, window, strides)]
    y = np.zeros(out)
    for pos in itertools.product(*map(range, out)):
        idx = tuple(slice(p * s, p * s + w) for p, s, w in zip(pos, strides, window))
        y[pos] = reduce(x[idx])
    return y


def test_pools_value_window_strides_padding_as_haiku_and_pax():
    x = _randn(2, 6, 6, 3)
    # PAX: max_pool(value, window_shape, strides, padding, channel_axis=-1)
    expected = _np_pool(_np(x), (1, 2, 2, 1), (1, 2, 2, 1), np.max)
    np.testing.assert_allclose(nn.max_pool(x, (2, 2, 1), (2, 2, 1), "VALID"), expected)
    np.testing.assert_allclose(nn.max_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), expected)
    np.testing.assert_allclose(nn.max_pool(x, 2, 2, "VALID"), expected)
    expected = _np_pool(_np(x), (1, 3, 3, 1), (1, 1, 1, 1), np.mean)
    np.testing.assert_allclose(nn.avg_pool(x, 3, 1, "VALID", -1), expected, rtol=1e-5)


def test_module_equality_and_hash_as_pax():
    a = nn.Linear(2, 3)
    assert a == a.copy() and hash(a) == hash(a.copy())
    assert a != nn.Linear(2, 3)  # other arrays
    assert a != a.replace(bias=jnp.zeros(3))
    assert a != a.eval()  # another structure
    assert {a: 1}[a.copy()] == 1
