"""`paxtrain summary`'s memory estimate against the memory a training step really takes.

Run: `python benchmarks/memory_estimate.py [--precision bfloat16] [--scan-layers]` on a GPU
(`--quick`: a tiny model anywhere, writes nothing). Goal on a GPU: the estimate within 10% of
the measured peak.

The recipe's `TransformerLM` at GPT-2-small sizes (`--quick`: tiny), adamw, batch 8 of random
ids. `Trainer.summary` estimates, without allocating anything, what one device needs for a step:
the compiled step's arguments, outputs and temporaries (`memory_analysis()`). Then the same
trainer builds the state and runs steps, and the peak is measured:
- on a GPU or TPU, `Device.memory_stats()["peak_bytes_in_use"]` of a fresh process after the
  steps (the state's build needs less than a step, so the peak is the step's);
- on a CPU, the arrays alive between steps (`jax.live_arrays`) plus what a step adds at its
  peak: the process's peak resident memory during the step (VmHWM, reset through
  /proc/self/clear_refs) less its resident memory before it. Set `MALLOC_MMAP_THRESHOLD_=65536`
  so that freed temporaries go back to the system rather than being reused unseen (gpu.sh does).
Writes a section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import gc
import sys

import jax
import numpy as np
import optax
from report import machine_line, section_title, write_section

from paxtrain.recipes.transformer_lm import TransformerLM
from paxtrain.telemetry.memory import GIB, host_peak_rss_bytes, host_rss_bytes, reset_host_peak
from paxtrain.train import StepSettings, Trainer, default_hooks

GPT2_SMALL = {"vocab_size": 50304, "seq_len": 1024, "num_layers": 12, "num_heads": 12,
              "model_dim": 768}  # fmt: skip
TINY = {"vocab_size": 256, "seq_len": 64, "num_layers": 2, "num_heads": 4, "model_dim": 64}
GOAL = 0.10


class RandomIds:
    """Batches of random token ids (speed and memory, not learning, are measured)."""

    def __init__(self, vocab_size: int, seq_len: int, batch_size: int):
        rng = np.random.default_rng(0)
        ids = rng.integers(0, vocab_size, size=(batch_size, seq_len + 1), dtype=np.int32)
        self.batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
        self.info = {"tokens_per_batch": batch_size * seq_len}

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        return self.batch

    def eval_batches(self):
        return iter(())


def measured_peak(trainer: Trainer, batch, steps: int) -> tuple[int, str]:
    """Runs `steps` steps and returns the peak bytes of a device during them, and how."""
    placed = trainer.plan.put_batch(batch)
    device = jax.devices()[0]
    if device.platform != "cpu":
        for _ in range(steps):
            jax.block_until_ready(trainer.run_step(placed))
        return int(device.memory_stats()["peak_bytes_in_use"]), "memory_stats() peak"
    jax.block_until_ready(trainer.run_step(placed))  # compiles
    gc.collect()
    live = sum(x.nbytes for x in jax.live_arrays())
    before = host_rss_bytes()
    reset_host_peak()
    for _ in range(steps - 1):
        jax.block_until_ready(trainer.run_step(placed))
    return live + host_peak_rss_bytes() - before, "live arrays + step's RSS peak"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--scan-layers", action="store_true", help="blocks under lax.scan")
    parser.add_argument("--quick", action="store_true", help="a tiny model; writes nothing")
    args = parser.parse_args()
    size = TINY if args.quick else GPT2_SMALL
    data = RandomIds(size["vocab_size"], size["seq_len"], args.batch)

    def model() -> TransformerLM:
        return TransformerLM(**size, scan_layers=args.scan_layers)

    trainer = Trainer(
        10, hooks=default_hooks(progress="off", plot=False), compile_cache=None,
        step=StepSettings(precision=args.precision),
    )  # fmt: skip
    summary = trainer.summary(model, data, optax.adamw(3e-4))
    trainer.prepare(model, data, optax.adamw(3e-4))
    peak, how = measured_peak(trainer, data.batch, steps=3)
    estimate = summary.needed_bytes
    error = estimate / peak - 1
    verdict = "within" if abs(error) <= GOAL else "outside"
    lines = [
        f"TransformerLM {size['num_layers']} layers, d_model {size['model_dim']}, seq "
        f"{size['seq_len']}, vocab {size['vocab_size']}; batch {args.batch}, {args.precision}"
        f"{', scanned' if args.scan_layers else ''}, adamw; {summary.parameters:,} parameters.",
        "",
        "| estimate (GiB) | measured peak (GiB) | estimate / peak - 1 | measured as |",
        "|---|---|---|---|",
        f"| {estimate / GIB:.3f} | {peak / GIB:.3f} | {error:+.1%} | {how} |",
        "",
        f"The estimate is {verdict} the goal of {GOAL:.0%}. Compiled step: "
        + ", ".join(f"{k} {v / GIB:.3f} GiB" for k, v in summary.step_bytes.items())
        + ".",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        flags = f" --precision {args.precision}" + (" --scan-layers" if args.scan_layers else "")
        body = (
            f"Command: `python benchmarks/memory_estimate.py --batch {args.batch}{flags}`\n\n"
            f"Machine: {machine_line()}\n\n{table}"
        )
        write_section(section_title(f"Memory estimate vs measured peak{flags}"), body)


if __name__ == "__main__":
    sys.exit(main())
