"""Step time of the parallel strategies: the sharded path against plain jit, then each strategy.

Run: `python benchmarks/parallel.py` (`--quick` for a smoke run that writes nothing).

1. One device: a transformer block (attention and an MLP, Adam) stepped by plain
   `make_train_step` and by the "jit" strategy on a one-device mesh (state placed by the plan,
   batch by `plan.put_batch`); interleaved rounds, median time per step. Target: ratio <= 1.05.
2. Eight devices: the same block per strategy (data parallel, FSDP, tensor parallel, all three,
   pmap). On a host with fewer than 8 devices this part runs in a subprocess on 8 virtual CPU
   devices (`--xla_force_host_platform_device_count=8`) that share the host's cores: its times
   show what partitioning and collectives cost, not a speed-up.
Writes a section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from report import machine_line, section_title, write_section
from timing import interleaved

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain import parallel
from paxtrain.train import TrainState, make_train_step

BATCH, TIME, DIM, HEADS = 64, 32, 128, 8
STRATEGIES = {
    # name: (strategy, mesh sizes)
    "data parallel": ("jit", {"data": -1}),
    "FSDP": ("jit", {"data": 1, "fsdp": -1}),
    "tensor parallel": ("jit", {"data": 2, "tensor": -1}),
    "data 2 x fsdp 2 x tensor 2": ("jit", {"data": 2, "fsdp": 2, "tensor": 2}),
    "pmap": ("pmap", None),
}


class Block(pax.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiHeadAttention(HEADS, DIM // HEADS, model_dim=DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), jax.nn.gelu, nn.Linear(4 * DIM, DIM))

    def __call__(self, x):
        x = x + self.attention(x)
        return x + self.mlp(x)


def loss_fn(model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), (model, {})


def host_batch() -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(BATCH, TIME, DIM)).astype(np.float32)
    return {"x": x, "y": np.tanh(x)}


def runner(strategy: str | None, mesh_sizes: dict | None = None) -> Callable[[], jax.Array]:
    """One step per call; `strategy=None` is plain `make_train_step` on the default device."""
    state = TrainState.create(Block(), optax.adam(1e-3), seed=0)
    state = make_train_step(loss_fn, nonfinite_guard=False).init(state)
    if strategy is None:
        step = make_train_step(loss_fn, nonfinite_guard=False)
        batch = jax.device_put(host_batch())
    else:
        mesh = parallel.make_mesh(**mesh_sizes) if mesh_sizes else None
        # Sharded over fsdp from 16K elements: every weight of this block.
        plan = parallel.setup(state, strategy, mesh)
        step = make_train_step(loss_fn, nonfinite_guard=False, **plan.step_kwargs)
        state, batch = plan.place(state), plan.put_batch(host_batch())
    holder = [state]

    def run() -> jax.Array:
        holder[0], metrics = step(holder[0], batch)
        return metrics["loss"]

    return run


def eight_device_times(rounds: int, calls: int) -> dict[str, float]:
    """Seconds per step of each strategy on 8 devices of this process."""
    runners = {"one device, plain jit": runner(None)}
    runners.update({name: runner(*args) for name, args in STRATEGIES.items()})
    return interleaved(runners, rounds, calls)


def eight_devices_elsewhere(rounds: int, calls: int) -> tuple[dict[str, float], str]:
    """`eight_device_times` here if this host has 8 devices, else on 8 virtual CPU devices."""
    if jax.device_count() == 8:
        return eight_device_times(rounds, calls), machine_line()
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, __file__, "--eight-devices", str(rounds), str(calls)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["times"], result["machine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few calls, no RESULTS.md update")
    parser.add_argument("--eight-devices", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.eight_devices:  # the subprocess of part 2
        times = eight_device_times(*args.eight_devices)
        print(json.dumps({"times": times, "machine": machine_line()}))
        return
    rounds, calls = (2, 5) if args.quick else (9, 50)

    one = interleaved(
        {
            "plain jit": runner(None),
            "sharded jit (1-device mesh)": runner("jit", {"devices": jax.devices()[:1]}),
        },
        rounds,
        calls,
    )
    plain = one["plain jit"]
    one_rows = [f"| {name} | {t * 1e3:.2f} | {t / plain:.3f} |" for name, t in one.items()]
    eight, eight_machine = eight_devices_elsewhere(rounds, max(calls // 5, 2))
    base = eight["one device, plain jit"]
    eight_rows = [f"| {name} | {t * 1e3:.2f} | {t / base:.2f} |" for name, t in eight.items()]
    model = f"attention ({HEADS} heads) + MLP 4x, width {DIM}, batch {BATCH} x {TIME}, Adam"
    table = "\n".join(
        [
            f"One device, {model} (median time per step):",
            "",
            "| step | ms/step | vs plain jit |",
            "|---|---|---|",
            *one_rows,
            "",
            f"Eight devices ({eight_machine}), the same block:",
            "",
            "| strategy | ms/step | vs one device |",
            "|---|---|---|",
            *eight_rows,
        ]
    )
    print(table)
    if not args.quick:
        body = (
            f"Command: `python benchmarks/parallel.py` ({rounds} interleaved rounds; medians). "
            "Target: sharded jit on one device <= 1.05x plain jit. Eight virtual CPU devices "
            "share this host's cores, so their rows show the cost of partitioning, not a "
            f"speed-up.\n\nMachine: {machine_line()}\n\n{table}"
        )
        write_section(section_title("Parallel strategies"), body)


if __name__ == "__main__":
    main()
