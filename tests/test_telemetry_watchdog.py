"""The step watchdog: a step that does not finish ends the run with WATCHDOG_EXIT_CODE and the
stacks of every thread, on one process and on each of two."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import cpu_env

from paxtrain.errors import ArgumentError
from paxtrain.train.pauses import pause
from paxtrain.train.watchdog import WATCHDOG_EXIT_CODE, Watchdog
from tests.test_parallel import SCRIPTS, start_two_processes

SCRIPT = os.path.join(SCRIPTS, "watchdog_sleep.py")


def test_a_sleeping_hook_ends_the_run_with_the_code_and_its_stack():
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, SCRIPT], env=cpu_env(1, SLEEP_PROCESS="0"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == WATCHDOG_EXIT_CODE, done.stderr[-3000:]
    assert "finished" not in done.stdout
    assert "watchdog: process 0 of 1 waited" in done.stderr
    assert "after step 8" in done.stderr
    # The main thread's stack names the frame that sleeps.
    assert 'Thread "MainThread"' in done.stderr
    assert "in on_step\n    time.sleep(60)" in done.stderr
    assert "main thread is in on_step" in done.stderr
    assert time.monotonic() - started < 60  # it did not wait for the sleep to end


@pytest.mark.slow
def test_a_hook_sleeping_on_one_of_two_processes_ends_both_with_the_code():
    procs = start_two_processes([sys.executable, SCRIPT], SLEEP_PROCESS="1")
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == WATCHDOG_EXIT_CODE, stderr[-3000:]
    (_, waiting), (_, sleeping) = outputs
    assert "watchdog: process 1 of 2 waited" in sleeping
    assert "in on_step\n    time.sleep(60)" in sleeping
    assert "main thread is in on_step" in sleeping
    # The other process waits for the step that the sleeping one does not join.
    assert "watchdog: process 0 of 2 waited" in waiting
    assert "time.sleep(60)" not in waiting


def test_work_between_steps_stops_the_clock():
    watchdog = Watchdog(factor=2, min_seconds=0.1)
    watchdog._durations, watchdog._last = [0.01], time.monotonic()
    with pause():
        time.sleep(0.3)  # longer than the limit, but between steps (an evaluation, a save)
    assert watchdog.limit() == 0.1


@pytest.mark.parametrize(
    "arguments, words",
    [({"factor": 1.0}, "watchdog is 1.0; it must be above 1"),
     ({"factor": 10, "min_seconds": 0}, "watchdog_min_seconds is 0")],
)  # fmt: skip
def test_bad_settings_are_refused(arguments, words):
    with pytest.raises(ArgumentError, match=words):
        Watchdog(**arguments)


def test_a_fit_that_raises_leaves_no_watchdog_behind(tmp_path):
    """A run that fails is not ended by its watchdog later (in a notebook, say)."""
    import optax

    from paxtrain.train import Trainer, default_hooks
    from paxtrain.train.hooks import Hook
    from tests.parallel_scripts import toy

    class Fail(Hook):
        def on_step(self, view, metrics):
            if view.step == 6:
                raise RuntimeError("a failing hook")

    class Data:
        info: dict = {}

        def train_batch(self, step):
            return toy.batch_of(step)

        def eval_batches(self):
            return iter(())

    watchdog = Watchdog(factor=2, min_seconds=0.2, warmup_steps=2)
    hooks = default_hooks(progress="off", plot=False, hooks=[Fail(), watchdog])
    trainer = Trainer(20, run_dir=tmp_path, loggers=[], hooks=hooks)
    with pytest.raises(RuntimeError, match="a failing hook"):
        trainer.fit(toy.Block(), Data(), optax.adam(1e-2), loss_fn=toy.loss_fn)
    watchdog._thread.join(timeout=5)  # it notices that fit is gone within a poll
    assert not watchdog._thread.is_alive()
