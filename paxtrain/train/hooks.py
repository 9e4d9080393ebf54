"""Hooks: everything optional in the training loop, and the narrow view of the trainer they get.

A hook overrides any of `on_train_start`, `on_step_taken`, `on_step`, `on_log`, `on_eval_end`,
`on_train_end`; each gets a `TrainerView` (the step, the state, `log`, `stop`, `evaluate`...),
not the trainer. A hook declares when its `on_step` runs, once: `every` N steps (default 1:
after every jitted call), `at_end` (also the last step), `skip_last` (never the last step:
its `on_train_end` does that one); the trainer's dispatcher (`train.dispatch`) decides. Step
calls must stay cheap: metrics are device arrays, and syncing them with the host is the
business of the hooks that run every N steps.

A hook with state that must survive a resume (a best value, a counter) defines `state_dict()`,
returning JSON-serializable data, and `load_state_dict(state)`: checkpoints save it under the
hook's `state_key` (its class and defining arguments) and a resume restores it, as Lightning
does for callbacks.

Example:
    >>> trainer.add_hook(lambda view, metrics: print(view.step), every=100)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from paxtrain.errors import ArgumentError
from paxtrain.train.monitor import Monitor
from paxtrain.train.view import TrainerView

if TYPE_CHECKING:
    from paxtrain.checkpoint.store import CheckpointManager

AT_LEAST_ONE_MSG = "{argument} is {value}; it must be at least 1, e.g. {argument}={example}."


def check_at_least_one(argument: str, value: int | None, example: int) -> None:
    """Raises `ArgumentError` for a count below 1 (None, "not used", passes).

    Example:
        >>> check_at_least_one("patience", 0, 3)
        Traceback (most recent call last):
        paxtrain.errors.ArgumentError: patience is 0; it must be at least 1, e.g. patience=3.
    """
    if value is not None and value < 1:
        raise ArgumentError(
            argument, AT_LEAST_ONE_MSG.format(argument=argument, value=value, example=example)
        )


class CheckpointStore(NamedTuple):
    """What a checkpointing hook opens for the trainer (`Hook.open_checkpoints`)."""

    manager: CheckpointManager
    resume: bool  # restore the newest checkpoint at the start of `fit`
    restart: bool = False  # start from step 0 where no checkpoint is readable (`resume`)


class Hook:
    """Base class of hooks; every method is optional.

    In a multi-process run every process runs the hooks (evaluation and checkpoints are
    collective), except those with `main_process_only`, which only process 0 runs: hooks that
    print or write files.

    Class attributes (an instance may set its own):
      every: `on_step` runs at the steps that cross a multiple of this; None: not by count.
      at_end: `on_step` also runs at the last step (`max_steps`).
      skip_last: `on_step` never runs at the last step (`on_train_end` handles it).
      order: hooks run in the order added, those of a larger order after.
      monitor: the eval metric this hook watches (checked against evaluation's at `prepare`),
        and `monitor_setting`, the config key that sets it.
    """

    main_process_only: bool = False
    every: int | None = 1
    at_end: bool = False
    skip_last: bool = False
    order: int = 0
    monitor: Monitor | None = None
    monitor_setting: str = ""

    @property
    def state_key(self) -> str:
        """The name the hook's state is saved under: its class and `key_arguments()`.

        Example:
            >>> EarlyStopping("loss").state_key
            'EarlyStopping{monitor=eval/loss,mode=min}'
        """
        arguments = ",".join(f"{name}={value}" for name, value in self.key_arguments().items())
        return type(self).__name__ + (f"{{{arguments}}}" if arguments else "")

    def key_arguments(self) -> dict[str, Any]:
        """The arguments that tell this hook from another of its class (in `state_key`)."""
        return {}

    @property
    def has_state(self) -> bool:
        """Whether the hook defines `state_dict` (checked without calling it, which may sync)."""
        return type(self).state_dict is not Hook.state_dict

    def state_dict(self) -> Any:
        """JSON-serializable state a resume restores; override with `load_state_dict`."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restores what `state_dict` returned."""

    def open_checkpoints(self, run_dir: pathlib.Path) -> CheckpointStore | None:
        """A hook that saves checkpoints opens the store here; the trainer holds it, restores
        from it (resume, rollback) and the hook saves into it. None: this hook saves none."""
        return None

    def step_context(self, view: TrainerView) -> contextlib.AbstractContextManager | None:
        """A context each step call runs in (a profiler's step annotation); None: none."""
        return None

    def nothing_left(self, step: int) -> str | None:
        """Why a run resumed at `step` has nothing left to train for this hook, or None."""
        return None

    def on_train_start(self, view: TrainerView) -> None:
        """Before the first step (after a resume, too)."""

    def on_step_taken(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        """After every jitted step call, due or not: cheap bookkeeping, no host sync."""

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        """After the step calls the cadence picks; `metrics` are on device (stacked if
        steps_per_call > 1)."""

    def on_log(self, view: TrainerView, scalars: dict[str, float]) -> None:
        """After scalars were recorded for `view.step`."""

    def on_eval_end(self, view: TrainerView, metrics: dict[str, float]) -> None:
        """After an evaluation, with its averaged metrics (keys without the `eval/` prefix)."""

    def on_train_end(self, view: TrainerView) -> None:
        """After the last step, also when stopped early."""


class EveryN(Hook):
    """Runs `fn(view, metrics)` at the steps that cross a multiple of `every`.

    Example:
        >>> trainer.add_hook(EveryN(lambda view, m: print(view.step), every=50))  # doctest: +SKIP
    """

    def __init__(self, fn: Callable[[TrainerView, dict[str, jax.Array]], Any], every: int):
        check_at_least_one("every", every, 10)
        self.fn, self.every = fn, every

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        self.fn(view, metrics)


FUNCTION_HOOK_MSG = "add_hook(fn, every=N): a function hook needs `every`."


def as_hook(hook: Hook | Callable[[TrainerView, Any], Any], every: int | None = None) -> Hook:
    """`hook` itself, or a function `fn(view, metrics)` as a hook run every `every` steps.

    Example:
        >>> as_hook(lambda view, metrics: None, every=5).every
        5
    """
    if isinstance(hook, Hook):
        return hook
    if every is None:
        raise ArgumentError("every", FUNCTION_HOOK_MSG)
    return EveryN(hook, every)


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

    at_end = True

    def __init__(self, every: int):
        check_at_least_one("log_every", every, 50)
        self.every = every
        self._pending: list[dict[str, Any]] = []

    def on_step_taken(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        self._pending.append(metrics)

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        self._log_pending(view)

    def on_train_end(self, view: TrainerView) -> None:
        # Stopped early (early stopping, a hook's stop): the steps since the last log step are
        # logged, and stay pending in the checkpoint, so that a resumed run logs at the next
        # log step what an uninterrupted run does. A preempted run logs them once resumed.
        if self._pending and not view.preempted:
            self._log_pending(view, keep=True)

    def _log_pending(self, view: TrainerView, keep: bool = False) -> None:
        host = jax.device_get(self._pending)
        if not keep:
            self._pending = []
        # Per step: a call's metrics are stacked, and steps restored from a checkpoint of a
        # run with other steps_per_call are not.
        view.log(
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

    at_end = True

    def __init__(self, every: int):
        check_at_least_one("log_every", every, 50)
        self.every = every

    def on_train_start(self, view: TrainerView) -> None:
        self._start, self._steps, self._wait = time.perf_counter(), 0, 0.0

    def on_step_taken(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        self._steps += view.steps_per_call
        self._wait += view.last_data_wait

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - self._start
        steps_per_s = self._steps / elapsed
        scalars = {
            "perf/steps_per_s": steps_per_s,
            "perf/examples_per_s": steps_per_s * view.examples_per_step,
            "perf/data_wait_frac": self._wait / elapsed,
        }
        if view.tokens_per_step:
            scalars["perf/tokens_per_s"] = steps_per_s * view.tokens_per_step
        view.log(scalars)
        self._start, self._steps, self._wait = time.perf_counter(), 0, 0.0


class Evaluation(Hook):
    """Evaluates every `every` steps (None: never by count) and at the end of training."""

    skip_last = True  # `on_train_end` evaluates the last step, also when stopped early

    def __init__(self, every: int | None):
        check_at_least_one("eval_every", every, 10)
        self.every = every

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        view.evaluate()

    def on_train_end(self, view: TrainerView) -> None:
        evaluated = view.eval_history and view.eval_history[-1][0] == view.step
        if not evaluated and not view.preempted:
            view.evaluate()


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

    every = None
    monitor_setting = "trainer.early_stopping.monitor"

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3, min_delta: float = 0.0):
        self.monitor = Monitor(monitor, mode)
        check_at_least_one("patience", patience, 3)
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def key_arguments(self) -> dict[str, Any]:
        return {"monitor": self.monitor.key, "mode": self.monitor.mode}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]

    def on_eval_end(self, view: TrainerView, metrics: dict[str, float]) -> None:
        if self.monitor.name not in metrics:
            raise KeyError(
                f"EarlyStopping monitors `{self.monitor.key}`, but evaluation reports "
                f"{sorted('eval/' + k for k in metrics)}."
            )
        value = self.monitor.sign * metrics[self.monitor.name]
        if self.best is None or value < self.best - self.min_delta:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.exhausted:
            view.stop(self.reason)

    @property
    def exhausted(self) -> bool:
        """Whether the patience is used up: the run stopped, or a resumed one has nothing to do."""
        return self.bad_evals >= self.patience

    @property
    def reason(self) -> str:
        """Why it stopped the run, as `trainer.stop_reason` says."""
        return (
            f"early stopping: {self.monitor.key} has not improved for {self.patience} evaluations"
        )

    def nothing_left(self, step: int) -> str | None:
        return EARLY_STOPPED_MSG.format(step=step, reason=self.reason) if self.exhausted else None


EARLY_STOPPED_MSG = (
    "nothing to train: {reason} when the run saved step {step}; raise "
    "`trainer.early_stopping.patience` to train further."
)


class PlotCurves(Hook):
    """Writes `curves.png` (loss and eval curves) into the run directory at the end, after the
    final checkpoint; skipped when a repeated stop signal asked to exit at once."""

    main_process_only = True

    every = None
    order = 2  # after the final checkpoint: a slow plot must not delay the save

    def on_train_end(self, view: TrainerView) -> None:
        from paxtrain.train.plot import plot_run

        if view.hurry:
            return
        view.flush_logs()
        plot_run(view.run_dir)
