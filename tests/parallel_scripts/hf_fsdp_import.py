"""`init_from=hf:DIR` on 8 virtual CPU devices with `mesh.fsdp=8`; prints one JSON line.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu (the test does).

The Llama fixture's parameters are laid out by the FSDP rule (every leaf split 8 ways) and read by
`load_hf_parameters`. Every array the loader makes is counted as it is made (`read_block`, the
copy out of the memory-mapped file, is wrapped), with the device shard it is made for; the
script reports, for each device, the bytes made for it and its final share, the largest single
array made, and the largest imported logit difference from transformers' logits.
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import paxtrain as pax
from paxtrain import parallel
from paxtrain.checkpoint.store import flatten_state
from paxtrain.hf import load
from paxtrain.hf.config import read_config
from paxtrain.recipes.llama_lm import LlamaLM

FIXTURE = pathlib.Path(sys.argv[1])


def main() -> None:
    _, settings = read_config(FIXTURE)
    abstract = jax.eval_shape(parallel.seeded(lambda: LlamaLM(**settings), 0))
    mesh = parallel.make_mesh(data=1, fsdp=8)
    shardings = parallel.state_shardings(abstract, mesh, fsdp_min_size=0)
    laid_out = parallel.laid_out(abstract, shardings)

    made = []  # (shape of what was asked, bytes made)
    read_block = load.read_block

    def counting(spec, tensors, index):
        block = read_block(spec, tensors, index)
        made.append(block.nbytes)
        return block

    load.read_block = counting
    model = load.load_hf_parameters(laid_out, FIXTURE)
    load.read_block = read_block

    share = collections.Counter()  # bytes each device holds once loaded
    for leaf in flatten_state(pax.select_parameters(model)).values():
        for shard in leaf.addressable_shards:
            share[shard.device.id] += shard.data.nbytes
    whole = sum(x.nbytes for x in flatten_state(pax.select_parameters(model)).values())
    prompt = jnp.asarray(np.load(FIXTURE.parent / "prompt.npy"), jnp.int32)
    logits = np.asarray(jax.jit(lambda m, x: m.eval()(x))(model, prompt))
    stats = jax.devices()[0].memory_stats()
    print(json.dumps({
        "devices": len(jax.devices()),
        "whole_bytes": whole,
        "share_bytes": [share[d.id] for d in jax.devices()],
        "made_bytes": sum(made),
        "made_calls": len(made),
        "largest_made": max(made),
        "largest_param": max(x.nbytes for x in flatten_state(pax.select_parameters(model)).values()),
        "specs": sorted({str(x.sharding.spec) for x in flatten_state(pax.select_parameters(model)).values()}),
        "max_logit_difference": float(np.abs(logits - np.load(FIXTURE / "logits.npy")).max()),
        "memory_stats": stats is not None,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
