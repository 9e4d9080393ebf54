"""The checkpointing hook: periodic saves, best-by-metric, resume at start, a final save."""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING, Any

import jax

from paxtrain.checkpoint.store import CheckpointManager
from paxtrain.errors import ConfigError
from paxtrain.parallel.distributed import main_process_decides
from paxtrain.train.hooks import Hook, crossed, hook_states, load_hook_states
from paxtrain.train.nonfinite import data_position

if TYPE_CHECKING:
    from paxtrain.train.trainer import Trainer

CHECKPOINT_DIR = "checkpoints"
# On several processes, `every_seconds` is checked every this many steps (see `on_step`).
CLOCK_SYNC_STEPS = 10

RESUME_STEPS_PER_CALL_MSG = (
    "the checkpoint in {directory} is at step {step}, not a multiple of trainer.steps_per_call "
    "({spc}): its calls would end at other steps than the log, checkpoint and last steps "
    "(past trainer.max_steps={max_steps}). Resume with a trainer.steps_per_call that divides "
    "{step} (1 always does)."
)


class Checkpointing(Hook):
    """Saves the `TrainState` every N steps and/or seconds, and at the end; resumes from the
    newest complete checkpoint of the run directory at the start.

    A checkpoint records the eval metrics of its own step only (so `keep_best` ranks each step
    by its own evaluation; the final save waits for the final evaluation) and the state of the
    hooks that have one (`state_dict()`), restored on resume.

    Args:
      every_steps: save when the step count crosses a multiple of this; None: only at the
        end (and on a preemption signal).
      every_seconds: save when this much time passed since the last save (on several
        processes checked every `CLOCK_SYNC_STEPS` steps, by process 0's clock).
      keep_last: number of newest checkpoints kept.
      keep_best: number of best checkpoints (by `monitor`) kept besides.
      monitor: eval metric ranking checkpoints, e.g. "eval/loss".
      mode: "min" or "max".
      async_save: write in the background while training goes on.
      resume: restore the newest checkpoint found at the start of `fit`.
      directory: defaults to `RUN_DIR/checkpoints`.
      meta: JSON-serializable facts saved with each checkpoint (config hash, versions).

    Example:
        >>> trainer = pax.Trainer(1000, checkpointing=Checkpointing(every_steps=100))  # doctest: +SKIP
    """

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
        directory: str | pathlib.Path | None = None,
        meta: dict[str, Any] | None = None,
    ):
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.manager_options = {
            "keep_last": keep_last,
            "keep_best": keep_best,
            "monitor": monitor,
            "mode": mode,
            "async_save": async_save,
        }
        self.resume, self.directory, self.meta = resume, directory, meta or {}
        self.manager: CheckpointManager | None = None
        self.resumed_from: int | None = None

    def resume_into(self, trainer: Trainer) -> None:
        """Opens the checkpoint directory and, with `resume`, restores the newest checkpoint
        into `trainer.state`. The trainer calls this before any hook's `on_train_start`."""
        directory = self.directory or trainer.run_dir / CHECKPOINT_DIR
        self.manager = CheckpointManager(directory, **self.manager_options)
        if self.resume and self.manager.latest_step() is not None:
            trainer.state, meta = self.manager.restore(trainer.checkpoint_state)
            trainer.step = self.resumed_from = int(trainer.state.step)
            # Saved by a run with other steps_per_call; nothing is compiled yet.
            if trainer.step % trainer.steps_per_call:
                self.manager.close()
                raise ConfigError(
                    RESUME_STEPS_PER_CALL_MSG.format(
                        directory=directory, step=trainer.step, spc=trainer.steps_per_call,
                        max_steps=trainer.max_steps,
                    )
                )  # fmt: skip
            load_hook_states(trainer.hooks, meta.get("hooks", {}))
            if trainer.is_main_process:
                print(f"paxtrain: resumed from {directory} at step {trainer.step}", flush=True)
        self._last_save_time, self._last_saved_step = time.monotonic(), trainer.step

    def on_step(self, trainer: Trainer, metrics: dict[str, jax.Array]) -> None:
        due = crossed(trainer.step, trainer.steps_per_call, self.every_steps)
        if self.every_seconds is not None:
            by_clock = time.monotonic() - self._last_save_time >= self.every_seconds
            if jax.process_count() > 1:
                # Each process has its own clock, but a save is collective: process 0's
                # decides, through a broadcast that waits for every process, so not every step.
                asked = crossed(trainer.step, trainer.steps_per_call, CLOCK_SYNC_STEPS)
                by_clock = asked and main_process_decides(by_clock)
            due = due or by_clock
        # The last step is saved by `on_train_end`, after its evaluation. After a rollback the
        # step may already have its checkpoint: the state it was restored from.
        if due and trainer.step < trainer.max_steps and trainer.step not in self.manager.steps():
            self.save(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.step != self._last_saved_step:
            self.save(trainer, wait=True)
        self.manager.close()

    def save(self, trainer: Trainer, wait: bool = False) -> None:
        """Saves the trainer's state now (synchronously with `wait`)."""
        # No copy of the state: Orbax copies every array to host memory before `save` returns
        # (only the writing is in the background), so the next step may donate the buffers.
        state = trainer.checkpoint_state
        evaluated = trainer.eval_history and trainer.eval_history[-1][0] == trainer.step
        metrics = (
            {f"eval/{k}": v for k, v in trainer.eval_history[-1][1].items()} if evaluated else None
        )
        # The batch the run goes on from: a rollback skips batches.
        position = data_position(trainer.state, trainer.step)
        meta = {**self.meta, "data_position": position, "hooks": hook_states(trainer.hooks)}
        self.manager.save(state, metrics=metrics, meta=meta, wait=wait)
        self._last_save_time, self._last_saved_step = time.monotonic(), trainer.step
