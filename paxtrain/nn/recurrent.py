"""Recurrent cells `VanillaRNN`, `LSTM`, `GRU`, and `unroll`, which runs a cell over time.

A cell is a pure step `cell(state, x) -> (new_state, output)` on [batch, features] inputs (or
unbatched [features]); its state is a NamedTuple of arrays made by `cell.initial_state(batch)`.
Cells do not change themselves, so `unroll` closes over the cell inside `jax.lax.scan` and only
the recurrent state is carried.

Initialization is PAX v0.4.3's: PAX multiplies `concat(x, h)` by one matrix, drawn by `w_init`
(default: a plain normal of std `1/sqrt(input_dim + hidden_dim)`). Here the input and hidden
weights are separate Linears (their names are what sharding rules match), so that matrix is drawn
whole and split by rows: every weight has PAX's distribution, whatever `w_init` is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.nn.initializers import Initializer, fan_in_normal, split_rng_key
from paxtrain.nn.linear import Linear


def _concat_weight_rows(
    w_init: Initializer | None, key: jax.Array, input_dim: int, hidden_dim: int, out_dim: int
) -> tuple[Initializer, Initializer]:
    """Initializers giving the input rows and the hidden rows of PAX's weight over concat(x, h)."""
    weight = (w_init or fan_in_normal)(key, (input_dim + hidden_dim, out_dim), jnp.float32)
    return (lambda *_: weight[:input_dim]), (lambda *_: weight[input_dim:])


class VanillaRNNState(NamedTuple):
    """State of `VanillaRNN`: the hidden vector [batch, hidden_dim]."""

    hidden: jax.Array


class LSTMState(NamedTuple):
    """State of `LSTM`: the output `hidden` and the memory `cell`, each [batch, hidden_dim]."""

    hidden: jax.Array
    cell: jax.Array


class GRUState(NamedTuple):
    """State of `GRU`: the hidden vector [batch, hidden_dim]."""

    hidden: jax.Array


class _RecurrentCell(pax.Module):
    """Gives cells `initial_state`: zeros for every field of `state_type`."""

    state_type: type
    hidden_dim: int

    def initial_state(self, batch_size: int | None = None) -> Any:
        """The zero state, [batch_size, hidden_dim] per field ([hidden_dim] when None)."""
        shape = (self.hidden_dim,) if batch_size is None else (batch_size, self.hidden_dim)
        return self.state_type(*(jnp.zeros(shape, jnp.float32) for _ in self.state_type._fields))


class VanillaRNN(_RecurrentCell):
    """`h' = activation(x W_x + b + h W_h)`; the output is `h'`.

    Example:
        >>> rnn = nn.VanillaRNN(3, 4)
        >>> rnn
        VanillaRNN(input_dim=3, hidden_dim=4, activation=tanh)
        >>> state, y = rnn(rnn.initial_state(2), jnp.ones((2, 3)))
        >>> y.shape
        (2, 4)
    """

    state_type = VanillaRNNState

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
        w_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.input_dim, self.hidden_dim, self.activation = input_dim, hidden_dim, activation
        w_key, b_key = split_rng_key(rng_key, 2)
        x_rows, h_rows = _concat_weight_rows(w_init, w_key, input_dim, hidden_dim, hidden_dim)
        self.input_to_hidden = Linear(input_dim, hidden_dim, w_init=x_rows, rng_key=b_key)
        self.hidden_to_hidden = Linear(
            hidden_dim, hidden_dim, with_bias=False, w_init=h_rows, rng_key=b_key
        )

    def __call__(self, state: VanillaRNNState, x: jax.Array) -> tuple[VanillaRNNState, jax.Array]:
        hidden = self.activation(self.input_to_hidden(x) + self.hidden_to_hidden(state.hidden))
        return VanillaRNNState(hidden), hidden


class LSTM(_RecurrentCell):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), with a forget-gate bias.

    With `[i, f, g, o] = x W_x + b + h W_h` (four blocks of `hidden_dim`):
    `c' = sigmoid(f + forget_gate_bias) * c + sigmoid(i) * tanh(g)`, `h' = sigmoid(o) * tanh(c')`.
    The output is `h'`. The arguments are PAX v0.4.3's, in its order, with its default
    `forget_gate_bias=0.0`; 1.0 keeps the memory open early in training (Jozefowicz et al.,
    2015), which the char_rnn recipe uses.

    Example:
        >>> lstm = nn.LSTM(3, 4)
        >>> lstm
        LSTM(input_dim=3, hidden_dim=4, forget_gate_bias=0.0)
        >>> state, y = lstm(lstm.initial_state(2), jnp.ones((2, 3)))
        >>> state.cell.shape, y.shape
        ((2, 4), (2, 4))
    """

    state_type = LSTMState

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        w_init: Initializer | None = None,
        forget_gate_bias: float = 0.0,
        *,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.forget_gate_bias = forget_gate_bias
        w_key, b_key = split_rng_key(rng_key, 2)
        x_rows, h_rows = _concat_weight_rows(w_init, w_key, input_dim, hidden_dim, 4 * hidden_dim)
        self.input_to_gates = Linear(input_dim, 4 * hidden_dim, w_init=x_rows, rng_key=b_key)
        self.hidden_to_gates = Linear(
            hidden_dim, 4 * hidden_dim, with_bias=False, w_init=h_rows, rng_key=b_key
        )

    def __call__(self, state: LSTMState, x: jax.Array) -> tuple[LSTMState, jax.Array]:
        gates = self.input_to_gates(x) + self.hidden_to_gates(state.hidden)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        cell = jax.nn.sigmoid(f + self.forget_gate_bias) * state.cell + jax.nn.sigmoid(
            i
        ) * jnp.tanh(g)
        hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
        return LSTMState(hidden, cell), hidden


class GRU(_RecurrentCell):
    """Gated recurrent unit in the original formulation of Cho et al. (2014), eqs. 5-8.

    `r = sigmoid(x W_r + b_r + h U_r)`, `z = sigmoid(x W_z + b_z + h U_z)`,
    `h~ = tanh(x W + b + (r * h) U)` (the reset gate acts before the recurrent matrix), and
    `h' = z * h + (1 - z) * h~` (z is the fraction of the old state kept). The output is `h'`.
    PyTorch and cuDNN instead use `r * (h U + b)` in the candidate and call `1 - z` the update.

    Example:
        >>> gru = nn.GRU(3, 4)
        >>> state, y = gru(gru.initial_state(), jnp.ones(3))
        >>> y.shape
        (4,)
    """

    state_type = GRUState

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        *,
        w_init: Initializer | None = None,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        gates_key, candidate_key, b_key = split_rng_key(rng_key, 3)
        # PAX's two matrices over concat(x, h) and concat(x, r * h): [r, z] and the candidate.
        x_rz, h_rz = _concat_weight_rows(w_init, gates_key, input_dim, hidden_dim, 2 * hidden_dim)
        x_c, h_c = _concat_weight_rows(w_init, candidate_key, input_dim, hidden_dim, hidden_dim)
        # Input weights for [r, z, candidate] in one matrix; the hidden weights of the candidate
        # are separate because they multiply r * h rather than h.
        self.input_to_gates = Linear(
            input_dim,
            3 * hidden_dim,
            w_init=lambda *_: jnp.concatenate([x_rz(), x_c()], axis=1),
            rng_key=b_key,
        )
        self.hidden_to_gates = Linear(
            hidden_dim, 2 * hidden_dim, with_bias=False, w_init=h_rz, rng_key=b_key
        )
        self.hidden_to_candidate = Linear(
            hidden_dim, hidden_dim, with_bias=False, w_init=h_c, rng_key=b_key
        )

    def __call__(self, state: GRUState, x: jax.Array) -> tuple[GRUState, jax.Array]:
        h = state.hidden
        x_r, x_z, x_candidate = jnp.split(self.input_to_gates(x), 3, axis=-1)
        h_r, h_z = jnp.split(self.hidden_to_gates(h), 2, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        candidate = jnp.tanh(x_candidate + self.hidden_to_candidate(r * h))
        hidden = z * h + (1.0 - z) * candidate
        return GRUState(hidden), hidden


def unroll(
    cell: Callable[[Any, Any], tuple[Any, Any]],
    xs: jax.Array,
    state: Any = None,
    *,
    time_major: bool = False,
) -> tuple[Any, jax.Array]:
    """Runs `cell` over the time axis of `xs` with `jax.lax.scan`; returns (final_state, outputs).

    Args:
      cell: a recurrent cell, `cell(state, x) -> (new_state, output)`, that does not change
        itself. A cell with its own state (dropout keys) must be carried through the scan
        instead: `pax.scan` with `pax.module_and_value(cell)` in the body.
      xs: [batch, time, features], or [time, batch, features] when `time_major`.
      state: the initial state; defaults to `cell.initial_state(batch_size)`.
      time_major: whether time is the first axis of `xs` and of the outputs.

    Returns:
      The state after the last step, and the outputs with the layout of `xs`.

    Example:
        >>> lstm = nn.LSTM(3, 4)
        >>> state, ys = nn.unroll(lstm, jnp.ones((2, 5, 3)))
        >>> ys.shape
        (2, 5, 4)
    """
    if state is None:
        state = cell.initial_state(xs.shape[1 if time_major else 0])
    return pax.scan(cell, state, xs, time_major=time_major)
