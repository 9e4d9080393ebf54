"""Compile time of the transformer_lm recipe's train step against depth, with and without scan.

Run: `python benchmarks/scan_layers.py` (`--quick` for a smoke run). For 2, 8 and 24 layers
(model_dim 64, 4 heads, seq_len 64, batch 8, AdamW), builds the Trainer's default step for
`TransformerLM(scan_layers=False)` and `(scan_layers=True)` from the same initial weights, times
`lower(...).compile()`, and checks that both give the same first loss. Goal: compile time flat in
depth with scan. Writes a section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from report import machine_line, section_title, write_section

import paxtrain as pax
from paxtrain.recipes.transformer_lm import TransformerLM
from paxtrain.train import TrainState, make_train_step
from paxtrain.train.trainer import model_loss

SEQ, BATCH, VOCAB = 64, 8, 98


def compile_and_first_loss(num_layers: int, scan_layers: bool) -> tuple[float, float]:
    pax.seed_rng_key(0)  # the same initial weights for both variants
    model = TransformerLM(VOCAB, SEQ, num_layers, num_heads=4, model_dim=64,
                          scan_layers=scan_layers)  # fmt: skip
    step = make_train_step(model_loss)
    state = step.init(TrainState.create(model, optax.adamw(1e-3)))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (BATCH, SEQ + 1)), jnp.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
    started = time.perf_counter()
    compiled = step.flat(treedef).lower(leaves, batch).compile()
    seconds = time.perf_counter() - started
    _, metrics = compiled(leaves, batch)
    return seconds, float(metrics["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="depths 1 and 2, no RESULTS.md")
    args = parser.parse_args()
    depths = (1, 2) if args.quick else (2, 8, 24)
    rows = []
    for depth in depths:
        (loop_s, loop_loss), (scan_s, scan_loss) = (
            compile_and_first_loss(depth, scan) for scan in (False, True)
        )
        assert abs(loop_loss - scan_loss) <= 1e-5 * abs(loop_loss), (loop_loss, scan_loss)
        rows.append(
            f"| {depth} | {loop_s:.2f} | {scan_s:.2f} | {loop_loss:.6f} | {scan_loss:.6f} |"
        )
    table = "\n".join(
        [
            "| layers | compile s, loop | compile s, scan | first loss, loop | first loss, scan |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if not args.quick:
        body = (
            f"Command: `python benchmarks/scan_layers.py` (Trainer's default step of "
            f"TransformerLM, model_dim 64, 4 heads, seq_len {SEQ}, batch {BATCH}; one compile "
            f"each). Goal: compile time flat in depth with scan, same losses.\n\n"
            f"Machine: {machine_line()}\n\n{table}"
        )
        write_section(section_title("Scanned layers: compile time vs depth"), body)


if __name__ == "__main__":
    sys.exit(main())
