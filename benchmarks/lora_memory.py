"""Optimizer-state memory of LoRA against full fine-tuning, for the llama_lm recipe scaled up.

Run: `python benchmarks/lora_memory.py` (`--quick` for a smoke run that writes nothing). For the
recipe at its own size (2 layers, 128 dims, GQA) and at Llama-2-7B's shape (32 layers, 32 heads,
4096 dims, SwiGLU 11008, vocabulary 32000), builds the `TrainState` with AdamW under
`jax.eval_shape` (nothing is allocated) for a full fine-tune and for LoRA of rank 8 and 16 on the
query and value projections (peft's default for Llama) and on all seven projections, and counts
the bytes of the trainable parameters and of the optimizer's state. The adapters' parameter
count is checked against the formula rank * (in + out) per adapted layer, and Adam's state
against two float32 moments per trainable parameter. Writes a section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
import optax
from report import machine_line, section_title, write_section

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.parallel import seeded
from paxtrain.recipes.llama_lm import LlamaLM, default_mlp_dim
from paxtrain.train import TrainState

SHAPES = {
    "llama_lm recipe (2 x 128)": {"vocab_size": 98, "num_layers": 2, "num_heads": 4,
                                  "num_kv_heads": 2, "model_dim": 128},
    "Llama-2-7B shape (32 x 4096)": {"vocab_size": 32000, "num_layers": 32, "num_heads": 32,
                                     "num_kv_heads": 32, "model_dim": 4096, "mlp_dim": 11008},
}  # fmt: skip
QUICK_SHAPES = {"tiny (2 x 32)": {"vocab_size": 50, "num_layers": 2, "num_heads": 4,
                                  "num_kv_heads": 2, "model_dim": 32}}  # fmt: skip
QV = [r"query_proj$", r"value_proj$"]
ALL = [r"proj$"]


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def state_bytes(shape: dict, rank: int | None, paths: list[str]) -> tuple[int, int, int]:
    """Bytes of all parameters, of the trainable ones and of AdamW's state, from shapes only."""

    def build():
        model = LlamaLM(**shape)
        if rank is not None:
            model = nn.apply_lora(model, rank=rank, alpha=2.0 * rank, paths=paths)
        return TrainState.create(model, optax.adamw(1e-4))

    state = jax.eval_shape(seeded(build, 0))
    trainable = pax.select_parameters(state.model)
    every = pax.select_parameters(pax.unfreeze_parameters(state.model))  # no dropout keys
    return nbytes(every), nbytes(trainable), nbytes(state.optimizer)


def adapter_parameters(shape: dict, rank: int, paths: list[str]) -> int:
    """rank * (in + out) summed over the adapted projections: the formula, independent of code."""
    dim, heads, kv_heads = shape["model_dim"], shape["num_heads"], shape["num_kv_heads"]
    kv_dim = dim // heads * kv_heads
    mlp = shape.get("mlp_dim") or default_mlp_dim(dim)
    sizes = {"query_proj": (dim, dim), "key_proj": (dim, kv_dim), "value_proj": (dim, kv_dim),
             "output_proj": (dim, dim), "gate_proj": (dim, mlp), "up_proj": (dim, mlp),
             "down_proj": (mlp, dim)}  # fmt: skip
    chosen = [n for n in sizes if paths == ALL or f"{n}$" in paths]
    return shape["num_layers"] * sum(rank * sum(sizes[n]) for n in chosen)


def mib(n: int) -> str:
    return f"{n / 2**20:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny model, no RESULTS.md")
    args = parser.parse_args()
    rows = []
    for name, shape in (QUICK_SHAPES if args.quick else SHAPES).items():
        params, full_trainable, full_opt = state_bytes(shape, None, [])
        assert full_trainable == params
        rows.append(f"| {name} | full fine-tune | {mib(params)} | {mib(full_opt)} | 1 |")
        for rank, paths, label in [(8, QV, "q, v"), (16, QV, "q, v"), (8, ALL, "all 7")]:
            total, trainable, opt = state_bytes(shape, rank, paths)
            assert trainable == 4 * adapter_parameters(shape, rank, paths), (trainable, label)
            # Adam's two float32 moments per trainable parameter, plus a few scalars (counts).
            assert 0 <= opt - 2 * trainable < 64, (opt, trainable)
            assert total == params + trainable  # the base is kept whole, frozen
            rows.append(
                f"| {name} | LoRA r={rank}, {label} | {mib(trainable)} | {mib(opt)} | "
                f"{opt / full_opt:.5f} |"
            )
    table = "\n".join([
        "| model | fine-tuning | trainable params, MiB | AdamW state, MiB | state vs full |",
        "|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    print(table)
    if not args.quick:
        body = (
            "Command: `python benchmarks/lora_memory.py` (AdamW's state of a `TrainState` built "
            "under `jax.eval_shape`, float32; LoRA via `paxtrain.nn.apply_lora`, which freezes "
            "every other parameter: the frozen base adds its parameters' bytes, the same in "
            "both, and no optimizer state). Checked against rank * (in + out) per adapted "
            "layer and two moments per trainable parameter.\n\n"
            f"Machine: {machine_line()}\n\n{table}"
        )
        write_section(section_title("LoRA: optimizer-state memory vs full fine-tuning"), body)


if __name__ == "__main__":
    sys.exit(main())
