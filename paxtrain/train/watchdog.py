"""`Watchdog`: ends a run whose steps stopped finishing, with every thread's stack in the log
and exit code `WATCHDOG_EXIT_CODE` (86), so that a scheduler restarts the job.

A multi-process run whose one rank is stuck (a dead host, a hung data read, a deadlock in a
hook) otherwise waits in a collective forever, with no error. The watchdog's thread fires when
no step has finished for `factor` times the median step time (at least `min_seconds`):

- it arms after `warmup_steps` step calls (the first ones compile), and the clock stops while
  the trainer evaluates, saves or restores a checkpoint (`train.pauses`), which take as long as
  they take;
- a step "finishes" when its metrics are ready on the device: each step call waits for the
  previous call's metrics (one call stays in flight), so the step times are the device's;
- it writes, to stderr, which process it is and the step it waited after, then each thread's
  Python stack (`sys._current_frames`), and exits (`os._exit`): no checkpoint is saved and the
  newest complete one is kept as it is. On several processes each one's watchdog fires on its
  own, so each log says which process it is and where its main thread is: the stuck one where
  it is stuck, the others that they wait for the step (a few seconds pass before a process
  leaves, so that the others fire before their step fails for want of it).

    paxtrain fit configs/transformer_lm.yaml trainer.watchdog=10     # 10 x the median step
"""

from __future__ import annotations

import atexit
import os
import statistics
import sys
import threading
import time
import traceback
from typing import Any

import jax

from paxtrain.errors import ArgumentError
from paxtrain.train import pauses
from paxtrain.train.hooks import Hook, TrainerView

WATCHDOG_EXIT_CODE = 86

FACTOR_MSG = "watchdog is {value}; it must be above 1 (a multiple of the median step), e.g. 10."
MIN_SECONDS_MSG = "watchdog_min_seconds is {value}; it must be positive, e.g. 60."

FIRED_MSG = (
    "paxtrain: watchdog: process {process} of {processes} waited {waited:.1f}s for a step to "
    "finish after step {step} (limit {limit:.1f}s: {factor:g} x the median step of "
    "{median:.3g}s, at least {min_seconds:g}s); its main thread is in {where}. Exiting with code "
    "{code} so that the job can be restarted; the checkpoints are left as they are. Stacks:"
)


def thread_stacks() -> str:
    """Every thread's current Python stack, named after its thread, innermost call last.

    Example:
        >>> "MainThread" in thread_stacks()
        True
    """
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f'Thread "{names.get(ident, ident)}":\n{stack}')
    return "\n".join(parts)


def _outermost_trainer_frame() -> Any:
    """The outermost frame of `paxtrain/train/trainer.py` on this thread's stack (the trainer's
    `fit`), or None when the hooks run outside a trainer."""
    trainer = sys.modules.get("paxtrain.train.trainer")
    found, frame = None, sys._getframe()
    while trainer is not None and frame is not None:
        if frame.f_code.co_filename == trainer.__file__:
            found = frame
        frame = frame.f_back
    return found


def _main_thread_location() -> str:
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "an unknown place"
    return f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"


class Watchdog(Hook):
    """Exits the process with `WATCHDOG_EXIT_CODE` when no step finishes within `factor` x the
    median step time (at least `min_seconds`), after dumping every thread's stack.

    Args:
      factor: the multiple of the median step time a step may take; above 1.
      min_seconds: the shortest limit (small steps vary more than their median says).
      warmup_steps: step calls before it arms (they compile); their times are not counted.

    Example:
        >>> trainer.add_hook(Watchdog(factor=10, min_seconds=60))  # doctest: +SKIP
    """

    every = None
    order = -1  # before every hook: the step is done when the others start

    def __init__(self, factor: float, min_seconds: float = 60.0, warmup_steps: int = 3):
        if not factor > 1:
            raise ArgumentError("watchdog", FACTOR_MSG.format(value=factor))
        if not min_seconds > 0:
            raise ArgumentError("watchdog_min_seconds", MIN_SECONDS_MSG.format(value=min_seconds))
        self.factor, self.min_seconds, self.warmup_steps = factor, min_seconds, warmup_steps
        self._thread: threading.Thread | None = None

    def on_train_start(self, view: TrainerView) -> None:
        self._calls, self._durations = 0, []
        self._last = time.monotonic()
        self._step = view.step
        self._in_flight: Any = None
        self._stop = threading.Event()
        # The loop's thread and its `Trainer.fit` frame: once that frame has left the stack (fit
        # returned, or raised past `on_train_end`), the watchdog has nothing left to watch.
        self._loop_thread, self._fit_frame = threading.get_ident(), _outermost_trainer_frame()
        self._thread = threading.Thread(target=self._watch, name="paxtrain-watchdog", daemon=True)
        self._thread.start()

    def on_step_taken(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        if self._in_flight is not None:
            jax.block_until_ready(self._in_flight)  # the previous call is done on the device
        self._in_flight = metrics
        now = time.monotonic()
        self._calls += 1
        if self._calls > self.warmup_steps and pauses.last_end() < self._last:
            self._durations.append(now - self._last)
        self._last, self._step = now, view.step

    def on_train_end(self, view: TrainerView) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def limit(self) -> float | None:
        """Seconds a step may take now: None before it is armed.

        Example:
            >>> Watchdog(10).limit() is None
            True
        """
        durations = getattr(self, "_durations", [])
        if not durations:
            return None
        return max(self.factor * statistics.median(durations), self.min_seconds)

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.min_seconds / 4)):
            if not self._training():
                return
            limit = self.limit()
            if limit is None or pauses.paused():
                continue
            waited = time.monotonic() - max(self._last, pauses.last_end())
            if waited > limit:
                self._fire(waited, limit)

    def _training(self) -> bool:
        """Whether the `fit` that started the watchdog is still on its thread's stack."""
        if self._fit_frame is None:
            return True
        frame = sys._current_frames().get(self._loop_thread)
        while frame is not None:
            if frame is self._fit_frame:
                return True
            frame = frame.f_back
        return False

    def _fire(self, waited: float, limit: float) -> None:
        message = FIRED_MSG.format(
            process=jax.process_index(), processes=jax.process_count(), waited=waited,
            step=self._step, limit=limit, factor=self.factor,
            median=statistics.median(self._durations), min_seconds=self.min_seconds,
            where=_main_thread_location(), code=WATCHDOG_EXIT_CODE,
        )  # fmt: skip
        sys.stderr.write(f"{message}\n{thread_stacks()}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        if jax.process_count() > 1:
            self._wait_for_the_others()
        os._exit(WATCHDOG_EXIT_CODE)

    def _wait_for_the_others(self) -> None:
        """Gives the other processes' watchdogs time to fire and write their stacks before this
        process leaves: they see the same stalled collective within a step or two, but once a
        peer is gone their step may fail instead of waiting. A failure in that time still
        exits with the watchdog's code (`atexit`). Process 0 leaves last: it hosts
        `jax.distributed`'s coordination service, whose end ends the others."""
        atexit.register(os._exit, WATCHDOG_EXIT_CODE)
        median = statistics.median(self._durations)
        time.sleep(2.0 + 3 * median + (3.0 if jax.process_index() == 0 else 0.0))
