"""The tiny model and data that the Trainer's tests share, and one place for shared fixtures.

`Regression` on `RegressionData` trains in a fraction of a second and its optimum is known
(y = x @ [1, -1, 2]); `PoisonedData` puts NaN targets at chosen steps. Test files import them
from here (`from conftest import Regression`) rather than from one another's test modules, so a
test file can be renamed or split without breaking the others.
"""

import json
import os

# The tests compile many small programs and run each a few times, so compiling dominates their
# CPU time. By default they compile faster than users' programs do: XLA's backend optimizations
# off (LLVM -O0) and XLA:CPU's older fusion emitters, which together cut the suite's CPU time by
# about 40%. Every check holds so, except a few bitwise equalities that depend on how XLA's
# optimizer fuses two differently written programs: those are marked `optimized_xla` and run
# where everything compiles as users compile it, with `PAXTRAIN_TEST_XLA=default` (the slow step
# of `.ci/run`). Child processes inherit the settings (`cpu_env` passes them on).
FAST_COMPILE = os.environ.get("PAXTRAIN_TEST_XLA", "fast") == "fast"
FAST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if FAST_COMPILE and FAST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA_FLAGS}".strip()

import jax.numpy as jnp  # noqa: E402  (after the settings above, which JAX reads at import)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import paxtrain as pax  # noqa: E402
import paxtrain.nn as nn  # noqa: E402


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """The environment of a child process on `devices` virtual CPU devices: this one's, without
    JAX settings or a cluster's SLURM variables that would change what the child does, with the
    tests' compile settings (above) and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    flags = [f"--xla_force_host_platform_device_count={devices}"]
    if FAST_COMPILE:
        flags.append(FAST_XLA_FLAGS)
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"]
    env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    return {**env, **extra}


def pytest_collection_modifyitems(config, items):
    """Under the fast compile settings, the `optimized_xla` tests are skipped: they run in the
    step that compiles as users compile (`PAXTRAIN_TEST_XLA=default`, `.ci/run`'s second)."""
    if not FAST_COMPILE:
        return
    skip = pytest.mark.skip(reason="bitwise under XLA's optimizations: PAXTRAIN_TEST_XLA=default")
    for item in items:
        if item.get_closest_marker("optimized_xla"):
            item.add_marker(skip)


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
