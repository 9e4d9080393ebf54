"""The view of a `Trainer` its hooks get: what a hook may read and ask for, and nothing it
could assign. `TrainerView` is the interface hooks are written against; the trainer makes a
`TrainerViewOf` itself and passes it to every hook call."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from paxtrain.checkpoint.store import CheckpointManager


class TrainerView(Protocol):
    """What a hook sees of the trainer: read the run, ask for things; never assign to it."""

    @property
    def step(self) -> int:
        """Optimizer steps done."""

    @property
    def max_steps(self) -> int:
        """The step training ends at."""

    @property
    def steps_per_call(self) -> int:
        """Steps per jitted call: the step advances by this much."""

    @property
    def run_dir(self) -> pathlib.Path:
        """The run directory."""

    @property
    def is_main_process(self) -> bool:
        """Whether this is process 0, the one that writes files."""

    @property
    def state(self) -> Any:
        """The `TrainState` (built from the loop's flat leaves when read)."""

    @property
    def data(self) -> Any:
        """The `DataSource` being trained on."""

    @property
    def examples_per_step(self) -> int:
        """Examples in one step's batch."""

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one step's batch (0: not counted)."""

    @property
    def last_data_wait(self) -> float:
        """Seconds the last step call waited for its batch."""

    @property
    def model_info(self) -> Any:
        """The model's parameters, model FLOPs per step, compute dtype (`Trainer.model_info`)."""

    @property
    def preempted(self) -> str | None:
        """The signal that asked the run to stop, if any."""

    @property
    def hurry(self) -> bool:
        """A repeated stop signal: skip what comes after the checkpoint."""

    @property
    def eval_history(self) -> Sequence[tuple[int, dict[str, float]]]:
        """(step, metrics) of each evaluation so far."""

    @property
    def checkpoints(self) -> CheckpointManager | None:
        """The run's checkpoint store, None without checkpointing."""

    def log(self, scalars: dict[str, float]) -> None:
        """Records scalars for the current step."""

    def stop(self, reason: str, *, nonfinite: bool = False) -> None:
        """Asks the loop to stop after the current step (`nonfinite`: on non-finite steps)."""

    def evaluate(self) -> dict[str, float]:
        """Evaluates now, logs `eval/*` and runs the `on_eval_end` hooks."""

    def flush_logs(self) -> None:
        """Writes what the loggers buffer."""

    def save_checkpoint(self, meta: dict[str, Any], wait: bool = False) -> None:
        """Saves the state, this step's eval metrics and the hooks' states into `checkpoints`."""

    def restore_latest(self) -> Any:
        """The newest checkpoint's `TrainState` (see `Trainer.restore_latest`)."""

    def continue_from(self, state: Any) -> None:
        """Trains on from `state` (see `Trainer.continue_from`)."""

    def rollback(self, lr_factor: float) -> int:
        """Rolls back to the newest checkpoint (see `Trainer.rollback`); returns its step."""

    def preempt(self, name: str) -> None:
        """Records that `name` asked the run to stop (the first one is kept)."""

    def hurry_up(self) -> None:
        """Asks the end-of-training hooks to do only what saves the run."""

    def add_hook(self, hook: Any) -> None:
        """Adds a hook."""

    def remove_hook(self, hook: Any) -> None:
        """Removes a hook."""



class TrainerViewOf:
    """The `TrainerView` of `trainer`: reads go to the trainer, requests to its methods.

    Example:
        >>> view = TrainerViewOf(trainer)  # doctest: +SKIP
        >>> view.step == trainer.step  # doctest: +SKIP
        True
    """

    __slots__ = ("_trainer",)

    def __init__(self, trainer: Any):
        self._trainer = trainer

    step = property(lambda self: self._trainer.step, doc="Optimizer steps done.")
    max_steps = property(lambda self: self._trainer.max_steps, doc="The last step.")
    steps_per_call = property(
        lambda self: self._trainer.steps_per_call, doc="Steps per jitted call."
    )
    run_dir = property(lambda self: self._trainer.run_dir, doc="The run directory.")
    is_main_process = property(lambda self: self._trainer.is_main_process, doc="Process 0.")
    state = property(lambda self: self._trainer.state, doc="The `TrainState`.")
    data = property(lambda self: self._trainer.data, doc="The `DataSource`.")
    examples_per_step = property(lambda self: self._trainer.examples_per_step)
    tokens_per_step = property(lambda self: self._trainer.tokens_per_step)
    last_data_wait = property(lambda self: self._trainer.last_data_wait)
    model_info = property(lambda self: self._trainer.model_info, doc="Parameters, FLOPs...")
    preempted = property(lambda self: self._trainer.preempted, doc="The stopping signal.")
    hurry = property(lambda self: self._trainer.hurry, doc="A repeated stop signal came.")
    checkpoints = property(lambda self: self._trainer.checkpoints, doc="The checkpoint store.")

    @property
    def eval_history(self) -> Sequence[tuple[int, dict[str, float]]]:
        """(step, metrics) of each evaluation so far, as a tuple (not to be appended to)."""
        return tuple(self._trainer.eval_history)

    def log(self, scalars: dict[str, float]) -> None:
        """Records scalars for the current step."""
        self._trainer.log(scalars)

    def stop(self, reason: str, *, nonfinite: bool = False) -> None:
        """Asks the loop to stop after the current step."""
        self._trainer.stop(reason, nonfinite=nonfinite)

    def evaluate(self) -> dict[str, float]:
        """Evaluates, logs `eval/*` and runs the `on_eval_end` hooks."""
        return self._trainer.evaluate()

    def flush_logs(self) -> None:
        """Writes what the loggers buffer."""
        self._trainer.logger.flush()

    def save_checkpoint(self, meta: dict[str, Any], wait: bool = False) -> None:
        """Saves a checkpoint of this step (see `Trainer.save_checkpoint`)."""
        self._trainer.save_checkpoint(meta, wait=wait)

    def restore_latest(self) -> Any:
        """The newest checkpoint's `TrainState` (see `Trainer.restore_latest`)."""
        return self._trainer.restore_latest()

    def continue_from(self, state: Any) -> None:
        """Trains on from `state` (see `Trainer.continue_from`)."""
        self._trainer.continue_from(state)

    def rollback(self, lr_factor: float) -> int:
        """Rolls back to the newest checkpoint (see `Trainer.rollback`)."""
        return self._trainer.rollback(lr_factor)

    def preempt(self, name: str) -> None:
        """Records that `name` asked the run to stop."""
        self._trainer.preempt(name)

    def hurry_up(self) -> None:
        """Asks the end-of-training hooks to do only what saves the run."""
        self._trainer.hurry_up()

    def add_hook(self, hook: Any) -> None:
        """Adds a hook."""
        self._trainer.add_hook(hook)

    def remove_hook(self, hook: Any) -> None:
        """Removes a hook."""
        self._trainer.hooks.remove(hook)


