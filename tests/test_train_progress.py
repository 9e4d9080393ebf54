"""The progress display: its clock starts after the compiling first step, and the bar counts
steps whose results are there (issue 23 item 16: no 1 -> 33 jump, no first ETA of hours)."""

from __future__ import annotations

import types

import jax.numpy as jnp
import pytest

from paxtrain.train import progress
from paxtrain.train.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def test_the_eta_leaves_out_the_first_step_and_its_compile(clock, capsys):
    hook, view = Progress("log"), types.SimpleNamespace(step=0, max_steps=111)
    hook.on_train_start(view)
    clock.now, view.step = 100.0, 1  # the first step compiles for 100 s
    hook.on_step(view, {"loss": jnp.ones(())})
    clock.now, view.step = 110.0, 11  # then 10 steps in 10 s: 100 more take 100 s
    hook.on_log(view, {"train/loss": 2.0, "train/bits_per_char": 2.5})
    assert capsys.readouterr().out == "step 11/111 | bits/char 2.5 | eta 1m40s\n"


def test_the_bar_counts_finished_steps_from_where_its_clock_restarted(clock):
    pytest.importorskip("tqdm")
    hook, view = Progress("bar"), types.SimpleNamespace(step=0, max_steps=50)
    hook.on_train_start(view)
    view.step = 1
    hook.on_step(view, {"loss": jnp.ones(())})
    assert (hook._bar.n, hook._bar.initial) == (1, 1)
    for view.step in range(2, 6):
        hook.on_step(view, {"loss": jnp.full((), view.step)})
    assert hook._bar.n == 5  # every step's metrics are ready: no more, no fewer
    view.step = 10
    hook.on_log(view, {"train/loss": 1.0})
    assert hook._bar.n == 10
    hook.on_train_end(view)
