"""Progress display: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from paxtrain.errors import ArgumentError
from paxtrain.train.hooks import Hook, TrainerView

MODES = ("auto", "bar", "log", "off")
UNKNOWN_MODE_MSG = "progress is {mode!r}; choose one of {modes}."


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _summary(scalars: dict[str, float]) -> str:
    labels = {
        "train/loss": "loss",
        "eval/loss": "eval loss",
        "perf/steps_per_s": "steps/s",
        "perf/tokens_per_s": "tokens/s",
    }
    return " | ".join(
        f"{label} {scalars[key]:.4g}" for key, label in labels.items() if key in scalars
    )


class Progress(Hook):
    """Shows progress with ETA, loss and throughput.

    Args:
      mode: "bar" (tqdm), "log" (one line per log step), "off", or "auto": a bar when stdout is
        a terminal, lines otherwise.

    Example:
        >>> Progress("log").mode
        'log'
        >>> Progress("bra")
        Traceback (most recent call last):
        paxtrain.errors.ArgumentError: progress is 'bra'; choose one of ('auto', 'bar', 'log', 'off').
    """

    main_process_only = True

    def __init__(self, mode: str = "auto"):
        if mode not in MODES:
            raise ArgumentError("progress", UNKNOWN_MODE_MSG.format(mode=mode, modes=MODES))
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "log"
        self.mode = mode
        self._bar: Any = None

    def on_train_start(self, view: TrainerView) -> None:
        self._start_time, self._start_step = time.perf_counter(), view.step
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=view.max_steps, initial=view.step, unit="step", dynamic_ncols=True
            )

    def on_step(self, view: TrainerView, metrics: Any) -> None:
        if self._bar is not None:
            self._bar.update(view.step - self._bar.n)

    def on_log(self, view: TrainerView, scalars: dict[str, float]) -> None:
        text = _summary(scalars)
        if not text:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
        elif self.mode == "log":
            done = view.step - self._start_step
            elapsed = time.perf_counter() - self._start_time
            eta = elapsed / done * (view.max_steps - view.step) if done else 0.0
            print(f"step {view.step}/{view.max_steps} | {text} | eta {_eta(eta)}", flush=True)

    def on_train_end(self, view: TrainerView) -> None:
        if self._bar is not None:
            self._bar.close()
