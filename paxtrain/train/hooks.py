"""Hooks: everything optional in the training loop.

A hook overrides any of `on_train_start`, `on_step`, `on_log`, `on_eval_end`, `on_train_end`.
`on_step` runs after every jitted call, so it must stay cheap: metrics are device arrays, and
syncing them with the host is the business of the hooks that run every N steps.

A hook with state that must survive a resume (a best value, a counter) defines `state_dict()`,
returning JSON-serializable data, and `load_state_dict(state)`: checkpoints save it and a resume
restores it, as Lightning does for callbacks.

Example:
    >>> trainer.add_hook(lambda trainer, metrics: print(trainer.step), every=100)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from paxtrain.train.trainer import Trainer


def crossed(step: int, steps_done: int, every: int | None) -> bool:
    """Whether a multiple of `every` lies in (step - steps_done, step].

    Example:
        >>> crossed(12, 4, 10), crossed(8, 4, 10)
        (True, False)
    """
    return bool(every) and step // every > (step - steps_done) // every


class Hook:
    """Base class of hooks; every method is optional.

    In a multi-process run every process runs the hooks (evaluation and checkpoints are
    collective), except those with `main_process_only`, which only process 0 runs: hooks that
    print or write files.
    """

    main_process_only: bool = False

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume, too)."""

    def on_step(self, trainer: Trainer, metrics: dict[str, jax.Array]) -> None:
        """After each jitted step call; `metrics` are on device (stacked if steps_per_call > 1)."""

    def on_log(self, trainer: Trainer, scalars: dict[str, float]) -> None:
        """After scalars were recorded for `trainer.step`."""

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After an evaluation, with its averaged metrics (keys without the `eval/` prefix)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step, also when stopped early."""


class EveryN(Hook):
    """Runs `fn(trainer, metrics)` whenever the step count crosses a multiple of `every`.

    Example:
        >>> trainer.add_hook(EveryN(lambda tr, m: print(tr.step), every=50))  # doctest: +SKIP
    """

    def __init__(self, fn: Callable[[Trainer, dict[str, jax.Array]], Any], every: int):
        self.fn, self.every = fn, every

    def on_step(self, trainer: Trainer, metrics: dict[str, jax.Array]) -> None:
        if crossed(trainer.step, trainer.steps_per_call, self.every):
            self.fn(trainer, metrics)


def hook_key(hooks: list[Hook], hook: Hook) -> str:
    """The name a hook's state is saved under: its class name, numbered when repeated.

    Example:
        >>> a, b = EarlyStopping("loss"), EarlyStopping("acc")
        >>> hook_key([a, b], a), hook_key([a, b], b)
        ('EarlyStopping', 'EarlyStopping#1')
    """
    same = [h for h in hooks if type(h) is type(hook)]
    index = next(i for i, h in enumerate(same) if h is hook)
    return type(hook).__name__ + (f"#{index}" if index else "")


def hook_states(hooks: list[Hook]) -> dict[str, Any]:
    """The `state_dict()` of every hook that has one, by `hook_key`.

    Example:
        >>> hook_states([EarlyStopping("loss")])
        {'EarlyStopping': {'best': None, 'bad_evals': 0}}
    """
    return {hook_key(hooks, h): h.state_dict() for h in hooks if hasattr(h, "state_dict")}


def load_hook_states(hooks: list[Hook], states: dict[str, Any]) -> None:
    """Gives each hook with `load_state_dict` the state `hook_states` saved for it.

    Example:
        >>> stopper = EarlyStopping("loss")
        >>> load_hook_states([stopper], {"EarlyStopping": {"best": 1.5, "bad_evals": 2}})
        >>> stopper.best, stopper.bad_evals
        (1.5, 2)
    """
    for hook in hooks:
        key = hook_key(hooks, hook)
        if hasattr(hook, "load_state_dict") and key in states:
            hook.load_state_dict(states[key])


# Metrics that count since the start (not per step): logged as their latest value, not a mean.
COUNTER_METRICS = ("skipped_steps",)


class TrainMetrics(Hook):
    """Logs the mean of each training metric over the last `every` steps, as `train/<name>`
    (counters such as `skipped_steps`: their latest value); when training stops early (not
    preempted), also over the steps since the last log step.

    Metrics stay on device between log steps; one host transfer per log. The steps not logged
    yet are part of the hook's state, so a run resumed from a checkpoint between two log steps
    logs the same means as an uninterrupted run.
    """

    def __init__(self, every: int):
        self.every = every
        self._pending: list[dict[str, Any]] = []

    def on_step(self, trainer: Trainer, metrics: dict[str, jax.Array]) -> None:
        self._pending.append(metrics)
        if (
            crossed(trainer.step, trainer.steps_per_call, self.every)
            or trainer.step >= trainer.max_steps
        ):
            self._log_pending(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        # Stopped early (early stopping, a hook's stop): the steps since the last log step are
        # logged, and stay pending in the checkpoint, so that a resumed run logs at the next
        # log step what an uninterrupted run does. A preempted run logs them once resumed.
        if self._pending and not trainer.preempted:
            self._log_pending(trainer, keep=True)

    def _log_pending(self, trainer: Trainer, keep: bool = False) -> None:
        host = jax.device_get(self._pending)
        if not keep:
            self._pending = []
        # Per step: a call's metrics are stacked, and steps restored from a checkpoint of a
        # run with other steps_per_call are not.
        trainer.log(
            {
                f"train/{k}": float(
                    np.max(host[-1][k])
                    if k in COUNTER_METRICS
                    else np.mean(np.concatenate([np.ravel(m[k]) for m in host]))
                )
                for k in host[0]
            }
        )

    def state_dict(self) -> dict[str, Any]:
        host = jax.device_get(self._pending)
        return {
            "pending": [
                {k: {"dtype": str(v.dtype), "value": np.asarray(v).tolist()} for k, v in m.items()}
                for m in host
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = [
            {k: np.asarray(v["value"], dtype=v["dtype"]) for k, v in m.items()}
            for m in state["pending"]
        ]


class Throughput(Hook):
    """Logs steps/s, examples/s, tokens/s and the share of time spent waiting for data."""

    def __init__(self, every: int):
        self.every = every

    def on_train_start(self, trainer: Trainer) -> None:
        self._start, self._steps, self._wait = time.perf_counter(), 0, 0.0

    def on_step(self, trainer: Trainer, metrics: dict[str, jax.Array]) -> None:
        self._steps += trainer.steps_per_call
        self._wait += trainer.last_data_wait
        if not (
            crossed(trainer.step, trainer.steps_per_call, self.every)
            or trainer.step >= trainer.max_steps
        ):
            return
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - self._start
        steps_per_s = self._steps / elapsed
        scalars = {
            "perf/steps_per_s": steps_per_s,
            "perf/examples_per_s": steps_per_s * trainer.examples_per_step,
            "perf/data_wait_frac": self._wait / elapsed,
        }
        if trainer.tokens_per_step:
            scalars["perf/tokens_per_s"] = steps_per_s * trainer.tokens_per_step
        trainer.log(scalars)
        self._start, self._steps, self._wait = time.perf_counter(), 0, 0.0


class Evaluation(Hook):
    """Evaluates every `every` steps and at the end of training."""

    def __init__(self, every: int | None):
        self.every = every

    def on_step(self, trainer: Trainer, metrics: dict[str, jax.Array]) -> None:
        if (
            crossed(trainer.step, trainer.steps_per_call, self.every)
            and trainer.step < trainer.max_steps
        ):
            trainer.evaluate()

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.last_eval_step != trainer.step and not trainer.preempted:
            trainer.evaluate()


class EarlyStopping(Hook):
    """Stops training when a monitored eval metric stops improving.

    Args:
      monitor: eval metric name, with or without the `eval/` prefix (e.g. "loss").
      mode: "min" or "max".
      patience: evaluations without improvement tolerated.
      min_delta: smallest change that counts as improvement.

    Example:
        >>> trainer.add_hook(EarlyStopping("eval/loss", patience=2))  # doctest: +SKIP
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor.removeprefix("eval/")
        self.sign = 1.0 if mode == "min" else -1.0
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise KeyError(
                f"EarlyStopping monitors `eval/{self.monitor}`, but evaluation reports "
                f"{sorted('eval/' + k for k in metrics)}."
            )
        value = self.sign * metrics[self.monitor]
        if self.best is None or value < self.best - self.min_delta:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.exhausted:
            trainer.stop(self.reason)

    @property
    def exhausted(self) -> bool:
        """Whether the patience is used up: the run stopped, or a resumed one has nothing to do."""
        return self.bad_evals >= self.patience

    @property
    def reason(self) -> str:
        """Why it stopped the run, as `trainer.stop_reason` says."""
        return (
            f"early stopping: eval/{self.monitor} has not improved for {self.patience} evaluations"
        )


class PlotCurves(Hook):
    """Writes `curves.png` (loss and eval curves) into the run directory at the end, after the
    final checkpoint; skipped when a repeated stop signal asked to exit at once."""

    main_process_only = True

    def on_train_end(self, trainer: Trainer) -> None:
        from paxtrain.train.plot import plot_run

        if trainer.hurry:
            return

        trainer.logger.flush()
        plot_run(trainer.run_dir)
