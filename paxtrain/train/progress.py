"""Progress display: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import collections
import sys
import time
from typing import Any

import jax

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


# Metrics in the units a recipe reports at the end (the final line's `eval/bits_per_char`), shown
# instead of the loss in nats when a run logs them.
_UNITS = {"bits_per_char": "bits/char", "bits_per_byte": "bits/byte"}


def _summary(scalars: dict[str, float]) -> str:
    """One line of the logged scalars: the loss (in a recipe's units, when it logs them),
    the eval loss, and the throughput.

    Example:
        >>> _summary({"train/loss": 1.5, "train/bits_per_char": 2.16, "perf/steps_per_s": 3.0})
        'bits/char 2.16 | steps/s 3'
    """
    labels = {}
    for split, prefix in (("train", ""), ("eval", "eval ")):
        unit = next((m for m in _UNITS if f"{split}/{m}" in scalars), None)
        key = f"{split}/{unit or 'loss'}"
        labels[key] = prefix + (_UNITS[unit] if unit else "loss")
    labels.update({"perf/steps_per_s": "steps/s", "perf/tokens_per_s": "tokens/s"})
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
        self._timed = False  # the clock restarts after the first step: its compile is no pace
        self._pending: collections.deque = collections.deque()
        if self.mode == "bar":
            from tqdm import tqdm

            # smoothing=0: the average pace since the clock restarted, not the last burst.
            self._bar = tqdm(
                total=view.max_steps, initial=view.step, unit="step", dynamic_ncols=True,
                smoothing=0,
            )  # fmt: skip

    def on_step(self, view: TrainerView, metrics: Any) -> None:
        if self.mode == "off":
            return
        if not self._timed:
            jax.block_until_ready(metrics)  # once: the first step, compile included, is done
            self._timed = True
            self._start_time, self._start_step = time.perf_counter(), view.step
            if self._bar is not None:
                self._restart_bar(view.step)
            return
        if self._bar is None:
            return
        # Steps are dispatched ahead of the device: the bar counts those whose results are
        # there, so it neither jumps ahead by the dispatch queue nor stalls at the next sync.
        self._pending.append((view.step, jax.tree_util.tree_leaves(metrics)))
        done = None
        while self._pending and all(
            leaf.is_ready() for leaf in self._pending[0][1] if isinstance(leaf, jax.Array)
        ):
            done = self._pending.popleft()[0]
        if done is not None:
            self._bar.update(done - self._bar.n)

    def _restart_bar(self, step: int) -> None:
        """The bar at `step`, its clock (rate, ETA) starting now."""
        self._bar.reset(total=self._bar.total)
        self._bar.n = self._bar.initial = self._bar.last_print_n = step
        self._bar.refresh()

    def on_log(self, view: TrainerView, scalars: dict[str, float]) -> None:
        text = _summary(scalars)
        if not text:
            return
        if self._bar is not None:
            self._pending.clear()  # logging read the step's metrics: every step is done
            self._bar.update(view.step - self._bar.n)
            self._bar.set_postfix_str(text, refresh=False)
        elif self.mode == "log":
            done = view.step - self._start_step
            elapsed = time.perf_counter() - self._start_time
            eta = elapsed / done * (view.max_steps - view.step) if done else 0.0
            print(f"step {view.step}/{view.max_steps} | {text} | eta {_eta(eta)}", flush=True)

    def on_train_end(self, view: TrainerView) -> None:
        if self._bar is not None:
            self._bar.close()
