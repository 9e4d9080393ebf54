"""The checkpointing hook: saves every N steps and/or seconds, and at the end.

It opens the run's checkpoint store for the trainer (`open_checkpoints`); the trainer holds
the store and restores from it (a resume at the start, a rollback), this hook only saves.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax

from paxtrain.checkpoint.store import CHECKPOINT_DIR, CheckpointManager
from paxtrain.errors import ArgumentError
from paxtrain.parallel.distributed import main_process_decides
from paxtrain.train.hooks import CheckpointStore, Hook, TrainerView, check_at_least_one
from paxtrain.train.monitor import Monitor

# On several processes, `every_seconds` is checked once per this many steps (see
# `on_step_taken`).
CLOCK_SYNC_STEPS = 10

KEEP_BEST_MSG = (
    "keep_best={keep_best} needs the metric that ranks checkpoints: add "
    "monitor='eval/loss' (or another eval metric), or set keep_best=0."
)


class Checkpointing(Hook):
    """Saves the `TrainState` every N steps and/or seconds, and at the end.

    A checkpoint records the eval metrics of its own step only (so `keep_best` ranks each step
    by its own evaluation; the final save waits for the final evaluation) and the state of the
    hooks that have one (`state_dict()`), restored on resume.

    Args:
      every_steps: save when the step count crosses a multiple of this; None: only at the
        end (and on a preemption signal).
      every_seconds: save when this much time passed since the last save (on several
        processes checked once per `CLOCK_SYNC_STEPS` steps, by process 0's clock).
      keep_last: number of newest checkpoints kept.
      keep_best: number of best checkpoints (by `monitor`) kept besides.
      monitor: eval metric ranking checkpoints, e.g. "eval/loss" (or "loss": the same).
      mode: "min" or "max".
      async_save: write in the background while training goes on.
      resume: restore the newest checkpoint found at the start of `fit`.
      restart: start from step 0 when the directory has checkpoints but none is readable
        (moving them aside as `STEP.corrupt`), or only ones moved aside before; without it,
        such a start is refused (`CheckpointManager.resume`): `paxtrain fit/resume --restart`.
      directory: defaults to `RUN_DIR/checkpoints`.
      meta: JSON-serializable facts saved with each checkpoint (config hash, versions).
      frozen_base: the source of the model's frozen parameters (a LoRA run's `init_from`):
        checkpoints then hold everything but those, and record the source with their
        fingerprints, checked on restore (`CheckpointManager`'s `frozen_base`).

    Example:
        >>> hooks = default_hooks(checkpointing=Checkpointing(every_steps=100))  # doctest: +SKIP
    """

    skip_last = True  # saved by `on_train_end`, after the last evaluation
    order = 1  # after the hooks whose work (eval metrics, state) a checkpoint records
    monitor_setting = "trainer.checkpoint.monitor"

    def __init__(
        self,
        every_steps: int | None = 500,
        every_seconds: float | None = None,
        keep_last: int = 3,
        keep_best: int = 0,
        monitor: str | None = None,
        mode: str = "min",
        async_save: bool = True,
        resume: bool = True,
        restart: bool = False,
        directory: str | pathlib.Path | None = None,
        meta: dict[str, Any] | None = None,
        frozen_base: str | None = None,
    ):
        check_at_least_one("every_steps", every_steps, 500)
        check_at_least_one("keep_last", keep_last, 3)
        if keep_best and not monitor:
            raise ArgumentError("keep_best", KEEP_BEST_MSG.format(keep_best=keep_best))
        self.every, self.every_seconds = every_steps, every_seconds
        self.monitor = Monitor(monitor, mode) if monitor else None
        self.keep_last, self.keep_best, self.async_save = keep_last, keep_best, async_save
        self.resume, self.restart = resume, restart
        self.directory, self.meta = directory, meta or {}
        self.frozen_base = frozen_base
        self._manager: CheckpointManager | None = None
        self._steps_unchecked = 0

    def open_checkpoints(self, run_dir: pathlib.Path) -> CheckpointStore:
        """Opens `directory` (default `run_dir/checkpoints`) for the trainer, which restores
        from it; this hook saves into it."""
        self._manager = CheckpointManager(
            self.directory or run_dir / CHECKPOINT_DIR,
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            monitor=self.monitor.key if self.monitor else None,  # checkpoints record `eval/*`
            mode=self.monitor.mode if self.monitor else "min",
            async_save=self.async_save,
            frozen_base=self.frozen_base,
        )
        return CheckpointStore(self._manager, self.resume, self.restart)

    def on_train_start(self, view: TrainerView) -> None:
        self._last_save_time, self._started_at = time.monotonic(), view.step

    def on_step_taken(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        if jax.process_count() == 1:  # on several, the next save's collective wait reports it
            self._manager.poll()  # a failed background save (a full disk) stops the run now
        if self.every_seconds is None:
            return
        by_clock = time.monotonic() - self._last_save_time >= self.every_seconds
        if jax.process_count() > 1:
            # Each process has its own clock, but a save is collective: process 0's decides,
            # through a broadcast that waits for every process, so not every step. Every
            # process counts the same steps, so all of them ask at the same calls.
            self._steps_unchecked += view.steps_per_call
            asked = self._steps_unchecked >= CLOCK_SYNC_STEPS
            self._steps_unchecked = 0 if asked else self._steps_unchecked
            by_clock = asked and main_process_decides(by_clock)
        if by_clock and view.step < view.max_steps:
            self._save_unless_saved(view)

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        self._save_unless_saved(view)

    def on_train_end(self, view: TrainerView) -> None:
        # The save in flight lands first: one that lost its directory is saved again here.
        self._manager.wait()
        if view.step != self._started_at:  # else nothing was trained since the start
            self._save_unless_saved(view, wait=True)

    def _save_unless_saved(self, view: TrainerView, wait: bool = False) -> None:
        # After a rollback the step may already have its checkpoint: the state it came from.
        if view.step not in self._manager.steps():
            self._save(view, wait=wait)

    def _save(self, view: TrainerView, wait: bool = False) -> None:
        view.save_checkpoint(self.meta, wait=wait)
        self._last_save_time = time.monotonic()
