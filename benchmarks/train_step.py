"""Time per training step: paxtrain against raw JAX, Equinox and Flax NNX, interleaved.

Run: `pip install -e ".[bench]" && python benchmarks/train_step.py` (`--quick` for a smoke run).

1. An MLP 784-256-256-10, batch 128, Adam: median time per step of the step the `Trainer`'s
   defaults give (non-finite guard, grad-norm metric, called as the loop calls it), paxtrain's
   lean step (the others' work), a raw-JAX step (parameters as dicts, `jax.jit`, donated
   buffers) alone and with the non-finite guard written by hand, `eqx.filter_jit` and
   `nnx.jit`; paxtrain with `steps_per_call=10`, and with the
   non-finite guard as `lax.cond` and as a select (the default picks per backend). Also XLA's
   cost analysis (bytes accessed) of the default, lean and raw-JAX programs.
2. A char-level LSTM (embed 64, hidden 256, batch 32, 128 steps of `lax.scan`): tokens/s of
   paxtrain's step against the same model in raw JAX.
Writes a section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from report import machine_line, section_title, write_section
from timing import interleaved
from trainer_step import bytes_accessed, trainer_runner, trainer_step_bytes

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.train import TrainState, make_train_step, skip_nonfinite
from paxtrain.train.step import TrainStep

BATCH, SIZES = 128, (784, 256, 256, 10)


def _mlp_batch(n: int | None = None):
    rng = np.random.default_rng(0)
    shape = (BATCH, SIZES[0]) if n is None else (n, BATCH, SIZES[0])
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, SIZES[-1], size=shape[:-1]).astype(np.int32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ------------------------------------------------------------------------------ paxtrain
class PaxMLP(pax.Module):
    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:])]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def pax_loss(model, batch):
    return _xent(model(batch["x"]), batch["y"]), (model, {})


def paxtrain_step(**options) -> TrainStep:
    """By default the same work as the other implementations: no guard, no grad-norm metric."""
    return make_train_step(pax_loss, **{"nonfinite_guard": False, "grad_norm": False, **options})


def paxtrain_runner(steps_per_call: int = 1, **options) -> Callable[[], None]:
    state = TrainState.create(PaxMLP(), optax.adam(1e-3), seed=0)
    step = paxtrain_step(steps_per_call=steps_per_call, **options)
    batch = _mlp_batch(None if steps_per_call == 1 else steps_per_call)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        return metrics["loss"]

    return run


def paxtrain_step_bytes(**options) -> float:
    step = paxtrain_step(**options)
    state = step.init(TrainState.create(PaxMLP(), optax.adam(1e-3), seed=0))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return bytes_accessed(step.flat(treedef), leaves, _mlp_batch())


# The non-finite guard's two mechanisms, whatever the backend's default (see `skip_nonfinite`).
SELECT_GUARD = {"grad_norm": True, "options": [skip_nonfinite(select=True)]}
COND_GUARD = {"grad_norm": True, "options": [skip_nonfinite(select=False)]}


# ------------------------------------------------------------------------------- raw JAX
def raw_step_and_args(guard: bool = False):
    """Raw JAX's step; with `guard`, also paxtrain's default guard written by hand (the
    gradients' norm, then optax's update under `lax.cond` on its finiteness), to tell what the
    guard itself costs from what paxtrain adds around it."""
    keys = jax.random.split(jax.random.PRNGKey(0), len(SIZES) - 1)
    params = [
        {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, SIZES[:-1], SIZES[1:])
    ]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def loss_fn(params, batch):
        x = batch["x"]
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        return _xent(x @ params[-1]["w"] + params[-1]["b"], batch["y"])

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        if not guard:
            return *update(params, opt_state, grads), loss
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        kept = jax.lax.cond(
            finite, lambda: update(params, opt_state, grads), lambda: (params, opt_state)
        )
        return *kept, loss

    return jax.jit(step, donate_argnums=(0, 1)), params, opt_state, _mlp_batch()


def raw_runner(guard: bool = False) -> Callable[[], None]:
    step, params, opt_state, batch = raw_step_and_args(guard)
    holder = [params, opt_state]

    def run():
        holder[0], holder[1], loss = step(holder[0], holder[1], batch)
        return loss

    return run


# ------------------------------------------------------------------------------ Equinox
def equinox_runner() -> Callable[[], None]:
    import equinox as eqx

    model = eqx.nn.MLP(
        SIZES[0], SIZES[-1], width_size=SIZES[1], depth=2, activation=jax.nn.relu,
        key=jax.random.PRNGKey(0),
    )  # fmt: skip
    tx = optax.adam(1e-3)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit(donate="all-except-first")
    def step(batch, model, opt_state):
        def loss_fn(model):
            return _xent(jax.vmap(model)(batch["x"]), batch["y"])

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    batch = _mlp_batch()
    holder = [model, opt_state]

    def run():
        holder[0], holder[1], loss = step(batch, holder[0], holder[1])
        return loss

    return run


# ------------------------------------------------------------------------------ Flax NNX
def nnx_runner() -> Callable[[], None]:
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.layers = nnx.List(
                [nnx.Linear(a, b, rngs=rngs) for a, b in zip(SIZES[:-1], SIZES[1:])]
            )

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
        def loss_fn(model):
            return _xent(model(batch["x"]), batch["y"])

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    batch = _mlp_batch()
    return lambda: step(model, optimizer, batch)


# ------------------------------------------------------------------------------ char LSTM
class PaxCharLSTM(pax.Module):
    def __init__(self, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embed(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, forget_gate_bias=1.0)
        self.head = nn.Linear(hidden, vocab)

    def __call__(self, ids):
        def step(carry, x):
            lstm, state = carry
            lstm, (state, h) = pax.module_and_value(lstm)(state, x)
            return (lstm, state), h

        init = (self.lstm, self.lstm.initial_state(ids.shape[0]))
        _, hs = pax.scan(step, init, self.embed(ids), time_major=False)
        return self.head(hs)


def _lstm_batch(vocab, seq, batch):
    ids = np.random.default_rng(0).integers(0, vocab, size=(batch, seq + 1)).astype(np.int32)
    return {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:])}


def pax_lstm_runner(vocab, embed, hidden, seq, batch) -> Callable[[], None]:
    def loss_fn(model, batch):
        return _xent(model(batch["inputs"]), batch["targets"]), (model, {})

    state = TrainState.create(PaxCharLSTM(vocab, embed, hidden), optax.adam(1e-3), seed=0)
    step = make_train_step(loss_fn, nonfinite_guard=False, grad_norm=False)
    data = _lstm_batch(vocab, seq, batch)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], data)
        return metrics["loss"]

    return run


def raw_lstm_runner(vocab, embed, hidden, seq, batch) -> Callable[[], None]:
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "embed": jax.random.normal(k[0], (vocab, embed)),
        "wx": jax.random.normal(k[1], (embed, 4 * hidden)) / np.sqrt(embed),
        "b": jnp.zeros(4 * hidden),
        "wh": jax.random.normal(k[2], (hidden, 4 * hidden)) / np.sqrt(hidden),
        "wo": jax.random.normal(k[3], (hidden, vocab)) / np.sqrt(hidden),
        "bo": jnp.zeros(vocab),
    }
    tx = optax.adam(1e-3)

    def loss_fn(p, data):
        xs = jnp.swapaxes(p["embed"][data["inputs"]], 0, 1)

        def cell(carry, x):
            h, c = carry
            i, f, g, o = jnp.split(x @ p["wx"] + p["b"] + h @ p["wh"], 4, axis=-1)
            c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((xs.shape[1], hidden))
        _, hs = jax.lax.scan(cell, (zeros, zeros), xs)
        logits = jnp.swapaxes(hs, 0, 1) @ p["wo"] + p["bo"]
        return _xent(logits, data["targets"])

    def step(p, opt_state, data):
        loss, grads = jax.value_and_grad(loss_fn)(p, data)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    data = _lstm_batch(vocab, seq, batch)
    holder = [params, tx.init(params)]

    def run():
        holder[0], holder[1], loss = step(holder[0], holder[1], data)
        return loss

    return run


def peer_runners() -> dict[str, Callable[[], None]]:
    """Equinox's and Flax NNX's steps, when installed (`pip install -e ".[bench]"`)."""
    runners = {}
    for name, make in (
        ("Equinox (filter_jit)", equinox_runner),
        ("Flax NNX (nnx.jit)", nnx_runner),
    ):
        try:
            runners[name] = make()
        except ImportError:
            print(f"{name}: not installed, left out")
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few calls, no RESULTS.md update")
    args = parser.parse_args()
    rounds, calls = (2, 10) if args.quick else (7, 100)

    mlp = {
        "raw JAX": raw_runner(),
        "raw JAX + the guard by hand (norm, lax.cond)": raw_runner(guard=True),
        "paxtrain Trainer (defaults)": trainer_runner(
            PaxMLP(), pax_loss, _mlp_batch(), optax.adam(1e-3)
        ),
        "paxtrain": paxtrain_runner(),
        "paxtrain steps_per_call=10": paxtrain_runner(10),
        "paxtrain + grad_norm metric, no guard": paxtrain_runner(grad_norm=True),
        "paxtrain, guard by lax.cond": paxtrain_runner(**COND_GUARD),
        "paxtrain, guard by select": paxtrain_runner(**SELECT_GUARD),
        **peer_runners(),
    }
    mlp_times = interleaved(
        mlp, rounds, {"default": calls, "paxtrain steps_per_call=10": calls // 10 or 1}
    )
    mlp_times["paxtrain steps_per_call=10"] /= 10  # per step, not per call
    raw = mlp_times["raw JAX"]
    rows = [f"| {name} | {t * 1e6:.0f} | {t / raw:.3f} |" for name, t in mlp_times.items()]
    cost = {
        "raw JAX": bytes_accessed(*raw_step_and_args()),
        "raw JAX + the guard by hand (norm, lax.cond)": bytes_accessed(*raw_step_and_args(True)),
        "paxtrain Trainer (defaults)": trainer_step_bytes(
            PaxMLP(), pax_loss, _mlp_batch(), optax.adam(1e-3)
        ),
        "paxtrain": paxtrain_step_bytes(),
        "paxtrain, guard by lax.cond": paxtrain_step_bytes(**COND_GUARD),
        "paxtrain, guard by select": paxtrain_step_bytes(**SELECT_GUARD),
    }
    cost_rows = [
        f"| {name} | {b / 1e6:.2f} | {b / cost['raw JAX']:.3f} |" for name, b in cost.items()
    ]

    lstm_sizes = (98, 64, 256, 128, 32)  # vocab, embed, hidden, seq, batch
    tokens = lstm_sizes[3] * lstm_sizes[4]
    lstm = {"raw JAX": raw_lstm_runner(*lstm_sizes), "paxtrain": pax_lstm_runner(*lstm_sizes)}
    lstm_times = interleaved(lstm, rounds, {"default": max(calls // 10, 3)})
    lstm_rows = [
        f"| {name} | {tokens / t:,.0f} | {lstm_times['raw JAX'] / t:.3f} |"
        for name, t in lstm_times.items()
    ]
    table = "\n".join(
        [
            "MLP 784-256-256-10, batch 128, Adam (median time per step):",
            "",
            "| implementation | µs/step | vs raw JAX |",
            "|---|---|---|",
            *rows,
            "",
            "XLA cost analysis of the same MLP step (bytes accessed per step):",
            "",
            "| program | MB accessed | vs raw JAX |",
            "|---|---|---|",
            *cost_rows,
            "",
            "Char-level LSTM (embed 64, hidden 256, seq 128, batch 32), scan over time:",
            "",
            "| implementation | tokens/s | throughput vs raw JAX |",
            "|---|---|---|",
            *lstm_rows,
        ]
    )
    print(table)
    if not args.quick:
        body = (
            f"Command: `python benchmarks/train_step.py` ({rounds} interleaved rounds; "
            f"medians). paxtrain rows do the others' work (`nonfinite_guard=False, "
            f"grad_norm=False`) unless named otherwise. "
            f"Targets: the Trainer's default step <= 1.05x raw JAX, lean <= 1.02x, both faster "
            f"than the peers; default bytes accessed within 10% of raw JAX; "
            f"steps_per_call=10 >= 2x faster per step than 1 on CPU; LSTM tokens/s >= 0.97x "
            f"raw JAX.\n\nMachine: {machine_line()}\n\n{table}"
        )
        write_section(section_title("Train step"), body)


if __name__ == "__main__":
    sys.exit(main())
