"""Sharded initialization on 8 virtual CPU devices with FSDP; prints one JSON line.

The same model is built eagerly (on one device, then placed) and through `Trainer.prepare` with
a function that builds it (under `jax.jit` with the layout's shardings). Reports whether their
initial states are equal, the state's bytes, each device's final share, and what the compiled
sharded build needs per device at most (its outputs plus its temporaries, from XLA's memory
analysis), against the whole state that the eager build puts on one device.
"""

from __future__ import annotations

import json
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain import parallel
from paxtrain.train import Trainer, TrainState, make_train_step

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


def prepared(model) -> Trainer:
    trainer = Trainer(2, run_dir=tempfile.mkdtemp(), mesh={"data": 1, "fsdp": 8}, seed=0)
    trainer.prepare(model, Data(), optax.adam(1e-3))
    return trainer


def main() -> None:
    pax.seed_rng_key(0)
    eager = prepared(MLP()).state
    trainer = prepared(MLP)
    sharded = trainer.state
    leaves = jax.tree_util.tree_leaves(sharded)
    state_bytes = sum(x.nbytes for x in leaves)
    share = max(
        sum(x.addressable_shards[i].data.nbytes for x in leaves) for i in range(jax.device_count())
    )

    def build():
        return make_train_step(MLP.loss).init(TrainState.create(MLP(), optax.adam(1e-3), seed=0))

    run = parallel.seeded(build, 0)
    # Leaves, not the tree: its optimizer's metadata differs from the trainer's by identity only.
    shardings = jax.tree_util.tree_leaves(trainer.plan.state_shardings)
    flat = jax.jit(lambda: jax.tree_util.tree_leaves(run()), out_shardings=shardings)
    compiled = flat.lower().compile()
    memory = compiled.memory_analysis()
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
                "build_peak": memory.output_size_in_bytes + memory.temp_size_in_bytes,
                "spec": str(sharded.model.layers[0].weight.sharding.spec),
            }
        )
    )


if __name__ == "__main__":
    main()
