"""Graceful stops on preemption signals: finish the step, save, flush, exit with a known code."""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

DEFAULT_PREEMPTION_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

# EX_TEMPFAIL from sysexits.h: "try again later", which is what a preempted job should do.
PREEMPTED_EXIT_CODE = 75

STOPPING_MSG = (
    "paxtrain: {name}: stopping after this step and saving a checkpoint; press Ctrl-C (or send "
    "the signal) again to exit as soon as the checkpoint is saved."
)
HURRY_MSG = "paxtrain: {name} again: exiting as soon as the checkpoint is saved (kill -9 aborts)."
BEFORE_TRAINING_MSG = (
    "paxtrain: {name} before training started: nothing to save. Run the same command again."
)


class PreemptedBeforeTraining(BaseException):
    """A preemption signal arrived while the run was being set up (`before_training`).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, name: str):
        super().__init__(BEFORE_TRAINING_MSG.format(name=name))
        self.signal_name = name


@contextlib.contextmanager
def before_training(names: Iterable[str] = DEFAULT_PREEMPTION_SIGNALS) -> Iterator[None]:
    """While active, the named signals raise `PreemptedBeforeTraining` (exit code 75 on the
    command line): a signal while data and model are built has nothing to save. The trainer's
    `stop_on_signals` takes over once training starts.

    Example:
        >>> with before_training():  # doctest: +SKIP
        ...     fit_from_config(cfg)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = [getattr(signal, name) for name in names]
    previous = {number: signal.getsignal(number) for number in numbers}

    def handle(number: int, frame: Any) -> None:
        raise PreemptedBeforeTraining(signal.Signals(number).name)

    for number in numbers:
        signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def stop_on_signals(trainer: Any, names: Iterable[str]) -> Iterator[None]:
    """While active, the named signals ask `trainer` to stop after its current step.

    The handler only records the request: the step in flight (even one being compiled) runs
    to completion, then the loop ends and the end-of-training hooks save and flush. Repeated
    signals never interrupt the save: they set `trainer.hurry`, which skips what comes after
    the checkpoint (the plot). SIGKILL remains the way to abort without saving.

    Example:
        >>> with stop_on_signals(trainer, ["SIGTERM"]):  # doctest: +SKIP
        ...     trainer._loop()
    """
    numbers = [getattr(signal, name) for name in names]
    if threading.current_thread() is not threading.main_thread():
        warnings.warn("Not in the main thread: preemption signals are not handled.", stacklevel=3)
        yield
        return
    previous = {number: signal.getsignal(number) for number in numbers}

    def handle(number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        again = trainer.preempted is not None
        if again:
            trainer.hurry = True
        else:
            trainer.preempted = name
            trainer.stop(f"preempted by {name}")  # the loop names the step it ended at
        if trainer.is_main_process:
            print((HURRY_MSG if again else STOPPING_MSG).format(name=name), flush=True)

    for number in numbers:
        signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
