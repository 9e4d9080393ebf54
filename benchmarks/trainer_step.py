"""The step a user gets from the `Trainer`'s defaults, as a benchmark runner.

`trainer_runner(model, loss_fn, batch, optimizer)` builds a `Trainer` with its default options
(non-finite guard, grad-norm metric, the state laid out by its plan) and returns `run()`, which
calls `trainer.run_step` exactly as the training loop does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax

import paxtrain as pax
from paxtrain.train import Trainer, default_hooks, make_train_step


class FixedBatch:
    """A `DataSource` whose every training batch is `batch` (no eval data)."""

    info: dict[str, Any] = {}

    def __init__(self, batch: Any):
        self.batch = batch

    def train_batch(self, step: int, rows: slice | None = None) -> Any:
        if rows is None:
            return self.batch
        return jax.tree_util.tree_map(lambda x: x[rows], self.batch)

    def eval_batches(self) -> Iterator[Any]:
        return iter(())


def default_trainer(model: pax.Module, loss_fn: Callable, batch: Any, optimizer: Any) -> Trainer:
    """A `Trainer` with default options, prepared (state built, step not yet compiled)."""
    trainer = Trainer(
        max_steps=1, run_dir=tempfile.mkdtemp(prefix="paxtrain-bench-"), loggers=["jsonl"],
        hooks=default_hooks(progress="off", plot=False),
    )
    trainer.prepare(model, FixedBatch(batch), optimizer, loss_fn=loss_fn)
    return trainer


def trainer_runner(
    model: pax.Module, loss_fn: Callable, batch: Any, optimizer: Any
) -> Callable[[], jax.Array]:
    """`run()` doing one `trainer.run_step` on `batch`, returning the loss."""
    trainer = default_trainer(model, loss_fn, batch, optimizer)
    placed = trainer.plan.put_batch(batch)

    def run() -> jax.Array:
        return trainer.run_step(placed)["loss"]

    return run


def trainer_step_bytes(model: pax.Module, loss_fn: Callable, batch: Any, optimizer: Any) -> float:
    """XLA's cost analysis of the Trainer's default step: bytes accessed per step."""
    trainer = default_trainer(model, loss_fn, batch, optimizer)
    leaves, treedef = jax.tree_util.tree_flatten(trainer.state)
    options = trainer.step_settings.step_options()
    step = make_train_step(loss_fn, **options, **trainer.plan.step_kwargs)
    return bytes_accessed(step.flat(treedef), leaves, trainer.plan.put_batch(batch))


def bytes_accessed(jitted: Any, *args: Any) -> float:
    """XLA's estimate of the bytes a compiled call reads and writes."""
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("bytes accessed", 0.0))
