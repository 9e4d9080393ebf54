"""Sharded initialization on 8 virtual CPU devices with FSDP; prints one JSON line.

The same model is built eagerly (on one device, then placed) and through `Trainer.prepare` with
a function that builds it (under `jax.jit` with the layout's shardings). Reports whether their
initial states are equal, the state's bytes, each device's final share, and what the compiled
sharded build needs per device at most (`build_peak`: its inputs, outputs and temporaries, from
XLA's memory analysis), against the whole state that the eager build puts on one device.
"""

from __future__ import annotations

import collections
import json
import math
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain import parallel
from paxtrain.train import Layout, Trainer, TrainState, make_train_step

WIDTH, LAYERS = 256, 4


class MLP(pax.Module):
    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)]

    def loss(self, batch):
        x = batch["x"]
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        loss = jnp.mean((x - batch["x"]) ** 2)
        return loss, {}


class Data:
    info: dict = {}

    def train_batch(self, step):
        return {"x": np.random.default_rng(step).normal(size=(8, WIDTH)).astype(np.float32)}

    def eval_batches(self):
        return iter(())


def per_device_share(arrays) -> int:
    """The most bytes of a pytree's arrays that any one device holds (from their shardings:
    reading `addressable_shards[i].data` would make arrays of its own)."""
    per_device = collections.Counter()
    for x in jax.tree_util.tree_leaves(arrays):
        shard_bytes = math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
        for device in x.sharding.addressable_devices:
            per_device[device] += shard_bytes
    return max(per_device.values(), default=0)


def build_peak(compiled) -> int:
    """What a compiled build needs per device at most: its inputs, outputs (less those that
    reuse a donated input's buffer) and temporaries, from XLA's memory analysis."""
    memory = compiled.memory_analysis()
    held = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    return held + memory.temp_size_in_bytes


def prepared(model) -> Trainer:
    trainer = Trainer(
        2, run_dir=tempfile.mkdtemp(), seed=0,
        layout=Layout(mesh={"data": 1, "fsdp": 8}),
    )
    trainer.prepare(model, Data(), optax.adam(1e-3))
    return trainer


def main() -> None:
    pax.seed_rng_key(0)
    eager = prepared(MLP()).state
    trainer = prepared(MLP)
    sharded = trainer.state
    leaves = jax.tree_util.tree_leaves(sharded)
    state_bytes = sum(x.nbytes for x in leaves)
    share = per_device_share(leaves)

    def build():
        return make_train_step(MLP.loss).init(TrainState.create(MLP(), optax.adam(1e-3), seed=0))

    run = parallel.seeded(build, 0)
    # Leaves, not the tree: its optimizer's metadata differs from the trainer's by identity only.
    shardings = jax.tree_util.tree_leaves(trainer.plan.state_shardings)
    flat = jax.jit(lambda: jax.tree_util.tree_leaves(run()), out_shardings=shardings)
    compiled = flat.lower().compile()
    equal = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree_util.tree_leaves(eager), leaves)
    )
    print(
        json.dumps(
            {
                "equal": equal,
                "state_bytes": state_bytes,
                "share": share,
                "build_peak": build_peak(compiled),
                "spec": str(sharded.model.layers[0].weight.sharding.spec),
            }
        )
    )


if __name__ == "__main__":
    main()
