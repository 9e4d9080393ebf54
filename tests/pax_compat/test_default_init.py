"""Default initializations: PAX v0.4.3's family and scale for every layer, from PAX's source.

PAX (pax/_src/nn/*.py, v0.4.3) draws `jax.nn.initializers.normal(1 / sqrt(fan_in))`: a plain
normal, not truncated. Linear: fan_in = in_dim; Conv: prod(kernel) * in_features (also for the
transposed convs, whose kernel is [*k, out, in]); Embed: `normal()` (std 0.01); LSTM and GRU:
one Linear over concat(x, h), so fan_in = input_dim + hidden_dim for every gate weight; biases
and norm offsets zero, norm scales one. Only the key stream differs from PAX.

The kurtosis tells the families apart: 3 for a normal, about 2.5 for a normal truncated at two
standard deviations (what paxtrain drew before).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain.nn as nn

NORMAL_KURTOSIS = 3.0


def _kurtosis(w):
    w = np.asarray(w, np.float64).ravel()
    return np.mean((w - w.mean()) ** 4) / w.var() ** 2


def _assert_plain_normal(w, std):
    """Mean 0, the given std and a normal's kurtosis, within sampling error of >= 50k values."""
    w = np.asarray(w, np.float64).ravel()
    assert w.size >= 50_000
    assert abs(w.mean()) < 5 * std / np.sqrt(w.size)
    np.testing.assert_allclose(w.std(), std, rtol=0.02)
    assert abs(_kurtosis(w) - NORMAL_KURTOSIS) < 0.1, _kurtosis(w)


KEY = jax.random.PRNGKey(0)

# (layer, weight, PAX's std)
WEIGHTS = {
    "Linear": lambda: (nn.Linear(300, 400, rng_key=KEY).weight, 1 / np.sqrt(300)),
    "Conv1D": lambda: (nn.Conv1D(64, 128, 9, rng_key=KEY).weight, 1 / np.sqrt(9 * 64)),
    "Conv2D": lambda: (nn.Conv2D(32, 64, 5, rng_key=KEY).weight, 1 / np.sqrt(25 * 32)),
    "Conv2D NCHW": lambda: (
        nn.Conv2D(32, 64, 5, data_format="NCHW", rng_key=KEY).weight,
        1 / np.sqrt(25 * 32),
    ),
    "Conv1DTranspose": lambda: (
        nn.Conv1DTranspose(64, 128, 9, rng_key=KEY).weight,
        1 / np.sqrt(9 * 64),
    ),
    "Conv2DTranspose": lambda: (
        nn.Conv2DTranspose(32, 64, 5, rng_key=KEY).weight,
        1 / np.sqrt(25 * 32),
    ),
    "Embed": lambda: (nn.Embed(1000, 100, rng_key=KEY).weight, 0.01),
}


@pytest.mark.parametrize("name", WEIGHTS)
def test_default_weight_is_paxs_plain_normal(name):
    weight, std = WEIGHTS[name]()
    _assert_plain_normal(weight, std)


def test_attention_w_init_scale_is_variance_scaling_normal_as_in_pax():
    mha = nn.MultiHeadAttention(8, 32, 2.0, rng_key=KEY)  # model_size 256
    for proj in (mha.query_projection, mha.output_projection):
        _assert_plain_normal(proj.weight, np.sqrt(2.0 / 256))


@pytest.mark.parametrize(
    "make, rows",
    [
        (lambda: nn.LSTM(200, 300, rng_key=KEY), ["input_to_gates", "hidden_to_gates"]),
        (lambda: nn.VanillaRNN(200, 300, rng_key=KEY), ["input_to_hidden", "hidden_to_hidden"]),
        (
            lambda: nn.GRU(200, 300, rng_key=KEY),
            ["input_to_gates", "hidden_to_gates", "hidden_to_candidate"],
        ),
    ],
)
def test_recurrent_weights_have_paxs_concat_fan_in(make, rows):
    cell = make()
    for role in rows:  # each weight role separately: input rows and hidden rows alike
        _assert_plain_normal(getattr(cell, role).weight, 1 / np.sqrt(200 + 300))
    np.testing.assert_array_equal(
        cell.input_to_gates.bias if hasattr(cell, "input_to_gates") else cell.input_to_hidden.bias,
        0.0,
    )


@pytest.mark.parametrize("cell_type", [nn.LSTM, nn.GRU])
def test_gate_pre_activation_std_is_paxs(cell_type):
    """With unit-normal x and h, PAX's gate pre-activation x W_x + h W_h has std 1.

    (Two Linears of fan-in `in` and `hidden`, paxtrain's old default, gave sqrt(2).)
    """
    cell = cell_type(256, 256, rng_key=KEY)
    rng = np.random.default_rng(0)
    x, h = rng.normal(size=(2, 4096, 256)).astype(np.float32)
    w_x, w_h = np.asarray(cell.input_to_gates.weight), np.asarray(cell.hidden_to_gates.weight)
    pre = x @ w_x[:, : w_h.shape[1]] + h @ w_h
    np.testing.assert_allclose(pre.std(), 1.0, rtol=0.02)


def test_a_given_w_init_draws_paxs_concat_matrix():
    """PAX calls w_init once for the [in + hidden, 4 * hidden] matrix: a variance-scaling
    initializer sees fan_in = in + hidden, not `in` and `hidden` separately."""
    init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    lstm = nn.LSTM(200, 300, init, rng_key=KEY)
    for role in ("input_to_gates", "hidden_to_gates"):
        _assert_plain_normal(getattr(lstm, role).weight, np.sqrt(2.0 / 500))
    ones = nn.LSTM(3, 4, jax.nn.initializers.ones, rng_key=KEY)
    np.testing.assert_array_equal(ones.hidden_to_gates.weight, np.ones((4, 16)))


@pytest.mark.parametrize(
    "norm",
    [
        lambda: nn.LayerNorm(8, -1, True, True),
        lambda: nn.GroupNorm(2, 8),
        lambda: nn.BatchNorm2D(8),
    ],
)
def test_norm_scale_is_one_and_offset_zero(norm):
    layer = norm()
    np.testing.assert_array_equal(layer.scale, jnp.ones_like(layer.scale))
    np.testing.assert_array_equal(layer.offset, jnp.zeros_like(layer.offset))


def test_biases_are_zero():
    np.testing.assert_array_equal(nn.Linear(3, 4).bias, np.zeros(4))
    np.testing.assert_array_equal(nn.Conv2D(3, 4, 3).bias, np.zeros(4))
