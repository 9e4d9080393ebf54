"""The toy trained under a step watchdog while a hook on one process sleeps past its limit.

Run alone, or as one of two processes (JAX_COORDINATOR_ADDRESS...) by test_telemetry_watchdog.py;
SLEEP_PROCESS names the process whose hook sleeps after step SLEEP_AFTER. The watchdog ends every
process with its exit code and the threads' stacks on stderr; the run is never meant to finish.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
import optax
import toy

from paxtrain import parallel
from paxtrain.train import Trainer, default_hooks
from paxtrain.train.hooks import Hook
from paxtrain.train.watchdog import Watchdog

SLEEP_AFTER = 8


class Data:
    info: dict = {}

    def train_batch(self, step, rows=None):
        batch = toy.batch_of(step)
        return batch if rows is None else parallel.take_rows(batch, rows)

    def eval_batches(self):
        return iter(())


class SleepPastTheLimit(Hook):
    """Sleeps for a minute after step SLEEP_AFTER on the process SLEEP_PROCESS names."""

    def on_step(self, view, metrics):
        if view.step == SLEEP_AFTER and jax.process_index() == int(os.environ["SLEEP_PROCESS"]):
            time.sleep(60)


def main() -> None:
    parallel.initialize_distributed(timeout_s=60)
    watchdog = Watchdog(factor=5, min_seconds=2.0, warmup_steps=2)
    trainer = Trainer(
        200, run_dir=tempfile.mkdtemp(), loggers=[],
        hooks=default_hooks(progress="off", plot=False, hooks=[SleepPastTheLimit(), watchdog]),
    )  # fmt: skip
    trainer.fit(toy.Block(), Data(), optax.adam(1e-2, eps=1e-3), loss_fn=toy.loss_fn)
    print("finished: the watchdog never fired", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
