"""The model, data and training loop that every parallel check runs, on any device layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain import parallel
from paxtrain.train import TrainState, make_train_step

BATCH, TIME, DIM, HEADS = 16, 4, 16, 4
STEPS = 4


class Block(pax.Module):
    """Attention and an MLP named as the default tensor-parallel rules expect, a head, and a
    running mean of the inputs (a float state that the pmap strategy must average)."""

    def __init__(self):
        super().__init__()
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        self.attention = nn.MultiHeadAttention(HEADS, DIM // HEADS, model_dim=DIM, rng_key=keys[0])
        self.mlp = nn.Sequential(
            nn.Linear(DIM, 2 * DIM, rng_key=keys[1]),
            jax.nn.gelu,
            nn.Linear(2 * DIM, DIM, rng_key=keys[2]),
        )
        self.head = nn.Linear(DIM, 1, rng_key=keys[3])
        self.register_state("input_mean", jnp.zeros(DIM))

    def __call__(self, x):
        self.input_mean = 0.9 * self.input_mean + 0.1 * x.mean((0, 1))
        x = x + self.attention(x)
        x = x + self.mlp(x)
        return self.head(x)[..., 0]


def loss_fn(model, batch):
    model, y = pax.purecall(model, batch["x"])
    return jnp.mean((y - batch["y"]) ** 2), (model, {"mean_prediction": y.mean()})


def batch_of(step: int, size: int = BATCH) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    x = rng.normal(size=(size, TIME, DIM)).astype(np.float32)
    return {"x": x, "y": np.tanh(x.sum(-1)).astype(np.float32)}


def stacked_batches(first: int, count: int) -> dict[str, np.ndarray]:
    batches = [batch_of(first + i) for i in range(count)]
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


def fresh_state(train_step) -> TrainState:
    # A large eps: the key projection's bias has a zero gradient (softmax ignores a shift of all
    # logits), and Adam with a tiny eps would turn float noise in it into full-size updates.
    return train_step.init(TrainState.create(Block(), optax.adam(1e-2, eps=1e-3), seed=0))


def host(tree):
    """Host copies of every leaf, whole, on every process."""

    def gather(x):
        return x if x.is_fully_addressable else multihost_utils.process_allgather(x, tiled=True)

    return jax.tree_util.tree_map(lambda x: np.asarray(gather(x)), tree)


def train(strategy=None, mesh=None, steps=STEPS, step_options=None, **setup_kwargs):
    """(losses, final state, train step, plan) after `steps` steps; `strategy=None` runs on one
    device with no plan."""
    step_options = step_options or {}
    spc = step_options.get("steps_per_call", 1)
    state = fresh_state(make_train_step(loss_fn, **step_options))
    plan, put = None, jax.device_put
    if strategy is not None:
        batch_axis = 1 if spc > 1 else 0
        plan = parallel.setup(state, strategy, mesh, batch_axis=batch_axis, **setup_kwargs)
        state, put = plan.place(state), plan.put_batch
    train_step = make_train_step(loss_fn, **step_options, **(plan.step_kwargs if plan else {}))
    losses = []
    for step in range(0, steps, spc):
        batch = stacked_batches(step, spc) if spc > 1 else batch_of(step)
        state, metrics = train_step(state, put(batch))
        losses.extend(np.atleast_1d(np.asarray(metrics["loss"])).tolist())
    return losses, state, train_step, plan


def leaves_by_path(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}
