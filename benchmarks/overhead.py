"""Host overhead of passing modules through `jax.jit`, against the same arrays as a dict.

Run: `python benchmarks/overhead.py` (add `--quick` for a smoke run). Measures, interleaved in one
process, the host time per call of a jitted forward pass taking (a) a 3-layer MLP and (b) a stack
of 100 layers, as a paxtrain module and as a plain dict of the same arrays; and the time of one
`tree_flatten` + `tree_unflatten` of each. Then a train step whose compute is negligible (a
4-4-4 MLP, batch 1, Adam), which takes *and returns* the whole state: raw JAX (dicts, donated),
paxtrain's `TrainStep` called with the state module, and the `Trainer`'s default step as its
loop runs it (`trainer.run_step`, the state kept flat). Writes a section of
`benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from report import machine_line, section_title, write_section
from trainer_step import trainer_runner

import paxtrain as pax
from paxtrain.train import TrainState, make_train_step, skip_nonfinite


class Dense(pax.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_parameter("weight", jax.random.normal(pax.next_rng_key(), (in_dim, out_dim)))
        self.register_parameter("bias", jnp.zeros((out_dim,)))


class Stack(pax.Module):
    def __init__(self, sizes: list[int]):
        super().__init__()
        self.layers = [Dense(a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def forward(layers, x):
    for layer in layers:
        x = jnp.tanh(x @ layer["weight"] + layer["bias"])
    return x


@jax.jit
def module_forward(stack: Stack, x):
    return forward([{"weight": d.weight, "bias": d.bias} for d in stack.layers], x)


@jax.jit
def dict_forward(params: dict, x):
    return forward([params[k] for k in sorted(params, key=int)], x)


def as_dict(stack: Stack) -> dict:
    return {
        str(i): {"weight": layer.weight, "bias": layer.bias} for i, layer in enumerate(stack.layers)
    }


def per_call_us(fn, args, calls: int) -> float:
    fn(*args).block_until_ready()
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    out.block_until_ready()
    return (time.perf_counter() - start) / calls * 1e6


def flatten_unflatten_us(tree, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        jax.tree_util.tree_unflatten(treedef, leaves)
    return (time.perf_counter() - start) / calls * 1e6


TINY = [4, 4, 4]


def _tiny_loss(model: Stack, batch):
    y = forward([{"weight": d.weight, "bias": d.bias} for d in model.layers], batch)
    return jnp.mean(y**2), (model, {})


def step_runners() -> dict:
    """Train-step calls that return the state, compute negligible (see the module docstring)."""
    x = jnp.ones((1, TINY[0]))
    tx = optax.adam(1e-3)
    params = as_dict(Stack(TINY))
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def raw_step(params, opt_state, x):
        def loss_fn(p):
            return jnp.mean(forward([p[k] for k in sorted(p, key=int)], x) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    raw = [params, opt_state]

    def run_raw():
        raw[0], raw[1], loss = raw_step(raw[0], raw[1], x)
        return loss

    step = make_train_step(_tiny_loss)
    module = [step.init(TrainState.create(Stack(TINY), tx))]

    def run_module():
        module[0], metrics = step(module[0], x)
        return metrics["loss"]

    select = make_train_step(
        _tiny_loss, nonfinite_guard=False, options=[skip_nonfinite(select=True)]
    )
    leaves, treedef = jax.tree_util.tree_flatten(select.init(TrainState.create(Stack(TINY), tx)))
    flat_select, flat = select.flat(treedef), [leaves]

    def run_flat_select():
        flat[0], metrics = flat_select(flat[0], x)
        return metrics["loss"]

    return {
        "raw JAX": run_raw,
        "paxtrain TrainStep(state)": run_module,
        "paxtrain Trainer (defaults, flat)": trainer_runner(Stack(TINY), _tiny_loss, x, tx),
        "paxtrain flat, guard by select": run_flat_select,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few calls, no RESULTS.md update")
    args = parser.parse_args()
    rounds, calls = (3, 200) if args.quick else (15, 2000)

    cases = {"3-layer MLP": [64, 64, 64, 10], "100-layer stack": [8] * 101}
    rows = []
    for label, sizes in cases.items():
        stack = Stack(sizes)
        params = as_dict(stack)
        x = jnp.ones((4, sizes[0]))
        samples: dict[str, list[float]] = {k: [] for k in ("module", "dict", "fu_mod", "fu_dict")}
        for _ in range(rounds):  # interleaved, so drift affects both sides alike
            samples["module"].append(per_call_us(module_forward, (stack, x), calls))
            samples["dict"].append(per_call_us(dict_forward, (params, x), calls))
            samples["fu_mod"].append(flatten_unflatten_us(stack, calls))
            samples["fu_dict"].append(flatten_unflatten_us(params, calls))
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append(
            f"| {label} | {med['module']:.1f} | {med['dict']:.1f} | "
            f"{med['module'] / med['dict']:.3f} | {med['fu_mod']:.1f} | {med['fu_dict']:.1f} |"
        )
    runners = step_runners()
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(per_call_us(run, (), calls))
    step_us = {name: statistics.median(v) for name, v in samples.items()}
    step_rows = [
        f"| {name} | {us:.1f} | {us / step_us['raw JAX']:.3f} |" for name, us in step_us.items()
    ]
    table = "\n".join(
        [
            "| case | jit call, module (µs) | jit call, dict (µs) | ratio | "
            "flatten+unflatten, module (µs) | flatten+unflatten, dict (µs) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Train step returning the state (4-4-4 MLP, batch 1, Adam; compute negligible):",
            "",
            "| call | µs per call | vs raw JAX |",
            "|---|---|---|",
            *step_rows,
        ]
    )
    print(table)
    if not args.quick:
        body = (
            f"Command: `python benchmarks/overhead.py` ({rounds} interleaved rounds of {calls} "
            f"calls, medians). Targets: module/dict ratio <= 1.10; the Trainer's step call "
            f"<= 1.10x raw JAX's.\n\nMachine: {machine_line()}\n\n{table}"
        )
        write_section(section_title("Module overhead through jax.jit"), body)


if __name__ == "__main__":
    main()
