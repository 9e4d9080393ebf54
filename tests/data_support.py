"""A tiny language model, and training runs through the Trainer, for the data-source tests."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.train import Hook, Trainer, default_hooks
from paxtrain.train.checkpointing import Checkpointing


class Bigram(pax.Module):
    """Next-token logits from the current token: compiles in a moment."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = nn.Embed(vocab_size, 8, rng_key=jax.random.PRNGKey(0))
        self.head = nn.Linear(8, vocab_size, rng_key=jax.random.PRNGKey(1))

    def loss(self, batch):
        logits = self.head(self.embed(batch["inputs"]))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        return loss, {}


class Regression(pax.Module):
    """A linear model of `batch["x"]` fitted to `batch["y"]`."""

    def __init__(self, features: int):
        super().__init__()
        self.fc = nn.Linear(features, 1, rng_key=jax.random.PRNGKey(0))

    def loss(self, batch):
        prediction = self.fc(batch["x"].reshape(len(batch["x"]), -1))[:, 0]
        return jnp.mean((prediction - batch["y"]) ** 2), {}


class SigtermAt(Hook):
    """Preempts the run (SIGTERM to this process) once it reaches `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, trainer, metrics):
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def fit(model, data, run_dir, max_steps, hooks=()):
    """Trains with Adam, checkpointing into `run_dir` (resuming from it); returns the state."""
    trainer = Trainer(
        max_steps=max_steps, run_dir=run_dir, loggers=["jsonl"],
        hooks=default_hooks(log_every=2, progress="off", plot=False, checkpointing=Checkpointing(async_save=False), hooks=hooks),
    )
    return trainer, trainer.fit(model, data, optax.adam(0.05))


def assert_preempted_resume_is_bitwise_exact(make_model, make_data, tmp_path, steps=6):
    """A run preempted at `steps // 2` and resumed (a new model and data source) ends with
    the parameters of an uninterrupted run, bit for bit."""
    _, straight = fit(make_model(), make_data(), tmp_path / "straight", steps)
    trainer, _ = fit(make_model(), make_data(), tmp_path / "cut", steps, [SigtermAt(steps // 2)])
    assert trainer.preempted and trainer.step == steps // 2
    trainer, resumed = fit(make_model(), make_data(), tmp_path / "cut", steps)
    assert trainer.resumed_from == steps // 2 and trainer.step == steps
    expected = jax.tree_util.tree_leaves(straight.model.parameters())
    got = jax.tree_util.tree_leaves(resumed.model.parameters())
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
