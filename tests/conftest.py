"""The tiny model and data that the Trainer's tests share, and one place for shared fixtures.

`Regression` on `RegressionData` trains in a fraction of a second and its optimum is known
(y = x @ [1, -1, 2]); `PoisonedData` puts NaN targets at chosen steps. Test files import them
from here (`from conftest import Regression`) rather than from one another's test modules, so a
test file can be renamed or split without breaking the others.
"""

import json
import os

# XLA's backend optimizations off (LLVM -O0): the tests compile many small programs and run each
# a few times, so compiling dominates, and -O0 cuts the suite's CPU time by about a third. Every
# check holds at -O0 except a few bitwise equalities that depend on how XLA's optimizer fuses
# two different programs; those are marked `optimized_xla` and compile with XLA's defaults
# (`optimized_xla` below). Child processes inherit the setting; set the variable to 0 to test
# everything as users compile it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (after the setting above, which JAX reads at import)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import paxtrain as pax  # noqa: E402
import paxtrain.nn as nn  # noqa: E402


@pytest.fixture(autouse=True)
def optimized_xla(request):
    """A test marked `optimized_xla` compiles with XLA's default optimizations: bitwise
    equalities between two differently written programs (traced vs eager builds, the train step
    vs raw JAX) are properties of XLA's optimized code, which users get. The in-memory caches are
    cleared on both sides, so no program compiled one way runs the other way."""
    if request.node.get_closest_marker("optimized_xla") is None:
        yield
        return
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
        jax.clear_caches()


class Regression(pax.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def loss(self, batch):
        loss = jnp.mean((self.fc(batch["x"]) - batch["y"]) ** 2)
        return loss, {"abs_err": jnp.sqrt(loss)}


class RegressionData:
    """y = x @ w, step-indexed; eval is a fixed set."""

    info = {"tokens_per_batch": 0}

    def __init__(self, noise=0.0):
        self.noise = noise

    def _batch(self, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(16, 3)).astype(np.float32)
        y = x @ np.array([[1.0], [-1.0], [2.0]], np.float32) + self.noise * rng.normal(size=(16, 1))
        return {"x": x, "y": y.astype(np.float32)}

    def train_batch(self, step):
        return self._batch(step)

    def eval_batches(self):
        return (self._batch(10_000 + i) for i in range(2))


class PoisonedData(RegressionData):
    """NaN targets in the batches of the given steps."""

    def __init__(self, bad_steps):
        super().__init__()
        self.bad_steps = set(bad_steps)

    def train_batch(self, step):
        batch = self._batch(step)
        if step in self.bad_steps:
            batch["y"] = batch["y"] * np.nan
        return batch


def read_jsonl(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
