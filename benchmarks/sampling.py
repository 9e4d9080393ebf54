"""Decoding speed: the KV cache of `paxtrain.recipes.sampling` against recomputing the sequence.

Run: `python benchmarks/sampling.py` (`--quick` for a smoke run). The llama_lm and transformer_lm
recipes' models at their configs' sizes (2 layers, 4 query heads, 128 dims; llama_lm with 2
key/value heads, transformer_lm with position embeddings for the whole 520 positions) continue an
8-token prompt by 512 tokens, greedily, two ways, both one jitted `lax.scan`: with the cache
(each step reads one new position) and by recomputing (each step runs the model on the whole
buffer). It checks that both give the same tokens, then times them interleaved (medians).
Goal: the cache at least 5x faster at 512 new tokens on CPU. Writes a section of
`benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
from report import machine_line, section_title, write_section
from timing import interleaved

import paxtrain as pax
from paxtrain.recipes.llama_lm import LlamaLM
from paxtrain.recipes.sampling import sample
from paxtrain.recipes.transformer_lm import TransformerLM

VOCAB, PROMPT = 98, 8
MODELS = {
    "llama_lm (4 query / 2 key-value heads)": lambda total: LlamaLM(
        VOCAB, num_layers=2, num_heads=4, num_kv_heads=2, model_dim=128
    ),
    "transformer_lm (4 heads, learned positions)": lambda total: TransformerLM(
        VOCAB, seq_len=total, num_layers=2, num_heads=4, model_dim=128
    ),
}


@functools.partial(jax.jit, static_argnums=2)
def without_cache(model: pax.Module, prompt: jax.Array, new: int) -> jax.Array:
    """Greedy decoding that runs the model on the whole (zero-padded) buffer for every token."""
    start, total = prompt.shape[0], prompt.shape[0] + new
    buffer = jnp.zeros(total, jnp.int32).at[:start].set(prompt)

    def step(buffer: jax.Array, position: jax.Array) -> tuple[jax.Array, None]:
        logits = model(buffer[None])[0, position - 1]
        return buffer.at[position].set(jnp.argmax(logits)), None

    buffer, _ = jax.lax.scan(step, buffer, jnp.arange(start, total))
    return buffer[start:]


def measure(model: pax.Module, new: int, rounds: int) -> dict[str, float]:
    """Median seconds of both decodings of `new` tokens; exits if their tokens differ."""
    prompt = jnp.arange(1, PROMPT + 1, dtype=jnp.int32)

    def cached() -> jax.Array:
        return sample(model, prompt, new, jax.random.PRNGKey(0), temperature=0.0)

    def recomputed() -> jax.Array:
        return without_cache(model, prompt, new)

    if cached().tolist() != recomputed().tolist():
        sys.exit(f"{type(model).__name__}: the cached decode gave other tokens than recomputing")
    return interleaved({"cache": cached, "recompute": recomputed}, rounds=rounds, calls=1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 new tokens, no RESULTS.md")
    args = parser.parse_args(argv)
    new, rounds = (64, 3) if args.quick else (512, 5)
    rows = []
    for name, build in MODELS.items():
        pax.seed_rng_key(0)
        times = measure(build(PROMPT + new).eval(), new, rounds)
        speedup = times["recompute"] / times["cache"]
        print(f"{name}: same tokens; cache {times['cache'] * 1e3:.1f} ms, recompute "
              f"{times['recompute'] * 1e3:.1f} ms: {speedup:.1f}x")  # fmt: skip
        rows.append(f"| {name} | {times['cache'] * 1e3:.1f} | {times['recompute'] * 1e3:.1f} | "
                    f"**{speedup:.1f}x** | {'met' if speedup >= 5 else 'NOT met'} |")  # fmt: skip
    if args.quick:
        return
    table = "\n".join(rows)
    write_section(
        section_title("Decoding with a KV cache"),
        f"""`python benchmarks/sampling.py` — {machine_line()}

The recipes' models at their configs' sizes (2 layers, 128 dims, vocabulary {VOCAB}), an
{PROMPT}-token prompt, {new} new tokens, greedy; both ways one jitted `lax.scan`, the same tokens
(checked). Milliseconds per {new} tokens, medians of {rounds} interleaved rounds (one warm-up
and one timed call each).

| model | KV cache (`paxtrain.recipes.sampling.sample`) | whole buffer each step | speed-up | goal: 5x |
|---|---|---|---|---|
{table}""",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
