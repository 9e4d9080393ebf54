"""VanillaRNN, LSTM and GRU against NumPy formulas; `unroll` against a Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np(linear):
    return np.asarray(linear.weight), None if linear.bias is None else np.asarray(linear.bias)


def _random_biases(cell):
    """Nonzero biases, so that a wrong bias placement shows up."""
    return cell.replace(
        input_to_gates=cell.input_to_gates.replace(
            bias=jnp.asarray(_randn(*cell.input_to_gates.bias.shape))
        )
    )


def test_lstm_step_matches_the_gate_formulas():
    lstm = _random_biases(nn.LSTM(3, 4, forget_gate_bias=0.5))
    x, h, c = _randn(2, 3), _randn(2, 4), _randn(2, 4)
    (state, y) = lstm(nn.LSTMState(h, c), x)

    w_x, b = _np(lstm.input_to_gates)
    w_h, _ = _np(lstm.hidden_to_gates)
    gates = x @ w_x + b + h @ w_h
    i, f, g, o = (gates[:, k * 4 : (k + 1) * 4] for k in range(4))
    new_c = _sigmoid(f + 0.5) * c + _sigmoid(i) * np.tanh(g)
    new_h = _sigmoid(o) * np.tanh(new_c)
    np.testing.assert_allclose(state.cell, new_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.hidden, new_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, new_h, rtol=1e-5, atol=1e-6)
    assert isinstance(state, nn.LSTMState)


def test_gru_step_matches_cho_et_al():
    gru = _random_biases(nn.GRU(3, 4))
    x, h = _randn(2, 3), _randn(2, 4)
    state, y = gru(nn.GRUState(h), x)

    w_x, b = _np(gru.input_to_gates)
    u_rz, _ = _np(gru.hidden_to_gates)
    u, _ = _np(gru.hidden_to_candidate)
    xw = x @ w_x + b
    r = _sigmoid(xw[:, :4] + h @ u_rz[:, :4])
    z = _sigmoid(xw[:, 4:8] + h @ u_rz[:, 4:])
    candidate = np.tanh(xw[:, 8:] + (r * h) @ u)
    new_h = z * h + (1 - z) * candidate
    np.testing.assert_allclose(state.hidden, new_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, new_h, rtol=1e-5, atol=1e-6)


def test_vanilla_rnn_step_matches_numpy():
    rnn = nn.VanillaRNN(3, 4, activation=jax.nn.relu)
    x, h = _randn(2, 3), _randn(2, 4)
    state, y = rnn(nn.VanillaRNNState(h), x)
    w_x, b = _np(rnn.input_to_hidden)
    w_h, _ = _np(rnn.hidden_to_hidden)
    expected = np.maximum(x @ w_x + b + h @ w_h, 0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.hidden, y)


@pytest.mark.parametrize("cell_type", [nn.VanillaRNN, nn.LSTM, nn.GRU])
def test_initial_state_is_zeros_of_the_right_shape(cell_type):
    cell = cell_type(3, 4)
    state = cell.initial_state(2)
    assert isinstance(state, cell.state_type)
    for field in state:
        np.testing.assert_array_equal(field, np.zeros((2, 4)))
    assert all(f.shape == (4,) for f in cell.initial_state())


def _python_loop(cell, xs, state):
    """xs [batch, time, features]."""
    ys = []
    for t in range(xs.shape[1]):
        state, y = cell(state, xs[:, t])
        ys.append(y)
    return state, jnp.stack(ys, axis=1)


def test_unroll_equals_a_python_loop():
    lstm = nn.LSTM(3, 4)
    xs = _randn(2, 5, 3)
    state0 = nn.LSTMState(jnp.asarray(_randn(2, 4)), jnp.asarray(_randn(2, 4)))
    loop_state, loop_ys = _python_loop(lstm, xs, state0)

    state, ys = nn.unroll(lstm, xs, state0)
    np.testing.assert_allclose(ys, loop_ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.cell, loop_state.cell, rtol=1e-5, atol=1e-6)

    tm_state, tm_ys = nn.unroll(lstm, jnp.swapaxes(xs, 0, 1), state0, time_major=True)
    np.testing.assert_allclose(jnp.swapaxes(tm_ys, 0, 1), loop_ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tm_state.hidden, loop_state.hidden, rtol=1e-5, atol=1e-6)

    _, zero_start = nn.unroll(lstm, xs)  # default state: zeros
    _, loop_zero_start = _python_loop(lstm, xs, lstm.initial_state(2))
    np.testing.assert_allclose(zero_start, loop_zero_start, rtol=1e-5, atol=1e-6)


def test_unroll_under_jit_and_grad_equals_the_loop():
    gru = nn.GRU(3, 4)
    xs = _randn(2, 5, 3)

    def loss_scan(cell, xs):
        state, ys = nn.unroll(cell, xs)
        return jnp.sum(ys**2) + jnp.sum(state.hidden)

    def loss_loop(cell, xs):
        state, ys = _python_loop(cell, xs, cell.initial_state(2))
        return jnp.sum(ys**2) + jnp.sum(state.hidden)

    value, grads = jax.jit(pax.value_and_grad(loss_scan))(gru, xs)
    loop_value, loop_grads = pax.value_and_grad(loss_loop)(gru, xs)
    np.testing.assert_allclose(value, loop_value, rtol=1e-5)
    for g, loop_g in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(loop_grads)):
        np.testing.assert_allclose(g, loop_g, rtol=1e-4, atol=1e-6)
    assert len(jax.tree_util.tree_leaves(grads)) == 4
