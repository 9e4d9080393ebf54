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


@contextlib.contextmanager
def stop_on_signals(trainer: Any, names: Iterable[str]) -> Iterator[None]:
    """While active, the named signals ask `trainer` to stop after its current step.

    The handler only records the request: the step in flight (even one being compiled) runs
    to completion, then the loop ends and the end-of-training hooks save and flush. A second
    signal of the same kind is handled the default way, so a stuck job can still be killed.

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
        signal.signal(number, previous[number])
        trainer.preempted = name
        trainer.stop(f"preempted by {name} at step {trainer.step}")

    for number in numbers:
        signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
