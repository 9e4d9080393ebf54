"""Decoding speed: the KV cache of `paxtrain.recipes.sampling` against recomputing the sequence.

Run: `python benchmarks/sampling.py` (`--quick` for a smoke run). The llama_lm recipe's model at
its config's sizes (2 layers, 4 query and 2 key/value heads, 128 dims) continues an 8-token
prompt by 512 tokens, greedily, two ways, both one jitted `lax.scan`: with the cache (each step
reads one new position) and by recomputing, as `TransformerLM.generate` does (each step runs the model on the whole
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

VOCAB, PROMPT = 98, 8


@functools.partial(jax.jit, static_argnums=2)
def without_cache(model: LlamaLM, prompt: jax.Array, new: int) -> jax.Array:
    """Greedy decoding that runs the model on the whole (zero-padded) buffer for every token."""
    start, total = prompt.shape[0], prompt.shape[0] + new
    buffer = jnp.zeros(total, jnp.int32).at[:start].set(prompt)

    def step(buffer: jax.Array, position: jax.Array) -> tuple[jax.Array, None]:
        logits = model(buffer[None])[0, position - 1]
        return buffer.at[position].set(jnp.argmax(logits)), None

    buffer, _ = jax.lax.scan(step, buffer, jnp.arange(start, total))
    return buffer[start:]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 new tokens, no RESULTS.md")
    args = parser.parse_args(argv)
    new = 64 if args.quick else 512
    pax.seed_rng_key(0)
    model = LlamaLM(VOCAB, num_layers=2, num_heads=4, num_kv_heads=2, model_dim=128).eval()
    prompt = jnp.arange(1, PROMPT + 1, dtype=jnp.int32)
    key = jax.random.PRNGKey(0)

    def cached() -> jax.Array:
        return sample(model, prompt, new, key, temperature=0.0)

    def recomputed() -> jax.Array:
        return without_cache(model, prompt, new)

    same = cached().tolist() == recomputed().tolist()
    times = interleaved({"cache": cached, "recompute": recomputed}, rounds=3 if args.quick else 5,
                        calls=2)  # fmt: skip
    speedup = times["recompute"] / times["cache"]
    print(f"same tokens: {same}; cache {times['cache'] * 1e3:.1f} ms, recompute "
          f"{times['recompute'] * 1e3:.1f} ms: {speedup:.1f}x")  # fmt: skip
    if not same:
        sys.exit("the cached decode gave other tokens than the recomputed one")
    if args.quick:
        return
    write_section(
        section_title("Decoding with a KV cache"),
        f"""`python benchmarks/sampling.py` — {machine_line()}

llama_lm's model (2 layers, 4 query / 2 key-value heads, 128 dims, vocabulary {VOCAB}), an
{PROMPT}-token prompt, {new} new tokens, greedy; both ways one jitted `lax.scan`, the same tokens
(checked). Medians of 5 interleaved rounds.

| decoding | ms per {new} tokens | ratio |
|---|---|---|
| KV cache (`paxtrain.recipes.sampling.sample`) | {times["cache"] * 1e3:.1f} | 1.00 |
| whole buffer each step (`TransformerLM.generate`'s way) | {times["recompute"] * 1e3:.1f} | {speedup:.2f} |

Goal: at least 5x at 512 new tokens on CPU: {"met" if speedup >= 5 else "NOT met"}.""",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
