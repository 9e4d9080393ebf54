"""Cost of checkpointing a ~100M-parameter training state: blocking time, throughput, restore.

Run: `python benchmarks/checkpoint.py` (defaults: an MLP of 6 layers of 4096 units, ~101M
parameters, Adam: a 1.2 GB state); `--quick` for a small smoke run that writes nothing.

Measures
1. how long training is blocked by one save: asynchronous (the call returns once the arrays
   are copied) against synchronous (the call returns once the files are written);
2. training throughput with an asynchronous checkpoint every `--every` steps against none
   (target >= 0.97x);
3. the time to restore the newest checkpoint into a fresh state;
4. the device memory a save adds while it copies the state to host: none when the state is
   saved as it is (as the Checkpointing hook does, since Orbax copies every array to host
   before `save` returns), one state when an on-device copy is saved (as it did before).
   Counted as the bytes of `jax.live_arrays()` beyond those before the save, and, where the
   backend reports it (GPU, TPU), the device's `peak_bytes_in_use`.
Writes a section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from report import machine_line, section_title, write_section

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.train import TrainState, make_train_step


class MLP(pax.Module):
    def __init__(self, width: int, layers: int):
        super().__init__()
        self.layers = [nn.Linear(width, width) for _ in range(layers)]

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def loss_fn(model, batch):
    return jnp.mean((model(batch) - batch) ** 2), (model, {})


def fresh_state(width: int, layers: int) -> TrainState:
    pax.seed_rng_key(0)
    return TrainState.create(MLP(width, layers), optax.adam(1e-4))


def train(state, step_fn, batch, steps: int, manager: CheckpointManager | None, every: int):
    """Runs `steps` steps, saving asynchronously every `every`; returns (state, seconds of
    training, not counting the wait for the last write)."""
    started = time.perf_counter()
    for i in range(1, steps + 1):
        state, metrics = step_fn(state, batch)
        if manager is not None and i % every == 0:
            # No copy, as the Checkpointing hook saves: Orbax has the arrays on host when
            # `save` returns, so the next step may donate them.
            manager.save(state)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - started
    if manager is not None:
        manager.wait()  # the last write finishes after training, as at the end of a real run
    return state, elapsed


def live_device_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays())


def peak_bytes_in_use() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def device_bytes_during_save(state, manager: CheckpointManager, copy: bool) -> dict:
    """Device bytes held while `manager.save` copies `state` to host beyond those held before
    (the state, the batch...), with or without an on-device copy of the state first."""
    before = live_device_bytes()
    saved = jax.tree_util.tree_map(jnp.copy, state) if copy else state
    jax.block_until_ready(saved)
    held = live_device_bytes()
    manager.save(saved)
    result = {"extra": held - before, "peak": peak_bytes_in_use()}
    del saved
    manager.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--saves", type=int, default=3, help="saves timed per mode")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no RESULTS.md update")
    args = parser.parse_args()
    if args.quick:
        args.width, args.layers, args.batch, args.steps, args.every, args.saves = (
            256,
            2,
            32,
            20,
            5,
            2,
        )

    state = fresh_state(args.width, args.layers)
    params = sum(x.size for x in jax.tree_util.tree_leaves(pax.select_parameters(state.model)))
    state_bytes = sum(x.nbytes for x in flatten_state(state).values())
    step_fn = make_train_step(loss_fn)
    batch = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.width))
    state, _ = train(state, step_fn, batch, 3, None, 1)  # compile

    root = tempfile.mkdtemp(prefix="paxtrain-ckpt-bench-")
    try:
        blocked = {}
        for mode in ("async", "sync"):
            manager = CheckpointManager(f"{root}/{mode}", keep_last=2, async_save=mode == "async")
            times = []
            for _ in range(args.saves):
                state, _ = step_fn(state, batch)
                jax.block_until_ready(state)
                started = time.perf_counter()
                manager.save(state)
                times.append(time.perf_counter() - started)
                manager.wait()
            blocked[mode] = statistics.median(times)
            manager.close()

        memory = {}
        for copy in (True, False):
            manager = CheckpointManager(f"{root}/memory-{copy}", keep_last=1)
            memory[copy] = device_bytes_during_save(state, manager, copy)
            manager.close()

        state, plain = train(state, step_fn, batch, args.steps, None, args.every)
        manager = CheckpointManager(f"{root}/throughput", keep_last=2)
        state, saving = train(state, step_fn, batch, args.steps, manager, args.every)
        manager.close()

        manager = CheckpointManager(f"{root}/throughput", keep_last=2)
        template = fresh_state(args.width, args.layers)
        started = time.perf_counter()
        restored, _ = manager.restore(step_fn.init(template))
        jax.block_until_ready(restored)
        restore_s = time.perf_counter() - started
        manager.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = "\n".join(
        [
            f"State: MLP {args.layers}x{args.width} ({params / 1e6:.1f}M parameters) + Adam = "
            f"{state_bytes / 2**30:.2f} GiB; batch {args.batch}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| training blocked per save, async | {blocked['async'] * 1e3:.0f} ms |",
            f"| training blocked per save, sync | {blocked['sync'] * 1e3:.0f} ms |",
            f"| {args.steps} steps, no checkpoints | {plain:.2f} s |",
            f"| {args.steps} steps, async checkpoint every {args.every} | {saving:.2f} s |",
            f"| throughput with checkpoints / without | {plain / saving:.3f} |",
            f"| restore newest checkpoint | {restore_s * 1e3:.0f} ms |",
            *(
                f"| extra device bytes during a save, {name} | "
                f"{memory[copy]['extra'] / 2**20:.0f} MiB "
                f"({memory[copy]['extra'] / state_bytes:.2f}x the state)"
                + (
                    f"; peak in use {memory[copy]['peak'] / 2**20:.0f} MiB"
                    if memory[copy]["peak"]
                    else ""
                )
                + " |"
                for copy, name in ((True, "with a device copy (before)"), (False, "no copy (now)"))
            ),
        ]
    )
    print(table)
    if not args.quick:
        body = (
            f"Command: `python benchmarks/checkpoint.py --width {args.width} --layers "
            f"{args.layers} --batch {args.batch} --steps {args.steps} --every {args.every}`. "
            f"Target: throughput with async checkpoints >= 0.97x.\n\n"
            f"Machine: {machine_line()}\n\n{table}"
        )
        write_section(section_title("Checkpoint cost"), body)


if __name__ == "__main__":
    main()
