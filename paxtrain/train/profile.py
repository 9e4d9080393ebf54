"""`trainer.profile`: a `jax.profiler` trace of some training steps, in `RUN_DIR/profile/`.

    paxtrain fit configs/char_rnn.yaml trainer.profile.start_step=100 trainer.profile.num_steps=5
    tensorboard --logdir runs/char_rnn-.../profile     # with `pip install tensorboard-plugin-profile` (xprof)

Steps `start_step` to `start_step + num_steps - 1` (counted from 0) are traced, each wrapped in
`jax.profiler.StepTraceAnnotation("train", step_num=...)`, so the profiler shows them as steps.
Skip the first steps: they compile.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import jax

from paxtrain.train.hooks import Hook

if TYPE_CHECKING:
    from paxtrain.train.trainer import Trainer

PROFILE_DIR = "profile"
STEP_NAME = "train"


class Profile(Hook):
    """Traces `num_steps` steps from step `start_step` into `RUN_DIR/profile/`.

    Args:
      start_step: the first traced step.
      num_steps: the number of traced steps.

    Example:
        >>> trainer.add_hook(Profile(start_step=10, num_steps=3))  # doctest: +SKIP
    """

    def __init__(self, start_step: int, num_steps: int = 3):
        if start_step < 0 or num_steps < 1:
            raise ValueError(
                f"Profile needs start_step >= 0 and num_steps >= 1, got {start_step}, {num_steps}"
            )
        self.start_step, self.stop_step = start_step, start_step + num_steps
        self.tracing = False

    def on_train_start(self, trainer: Trainer) -> None:
        self._maybe_start(trainer)

    def on_step(self, trainer: Trainer, metrics: dict[str, jax.Array]) -> None:
        if self.tracing and trainer.step >= self.stop_step:
            jax.block_until_ready(metrics)  # the traced steps' device work belongs in the trace
            self._stop(trainer)
        self._maybe_start(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.tracing:
            self._stop(trainer)

    def _maybe_start(self, trainer: Trainer) -> None:
        if not self.tracing and self.start_step <= trainer.step < self.stop_step:
            jax.profiler.start_trace(str(trainer.run_dir / PROFILE_DIR))
            self.tracing = True
            trainer.trace_step = _annotation(trainer)

    def _stop(self, trainer: Trainer) -> None:
        jax.profiler.stop_trace()
        self.tracing = False
        trainer.trace_step = contextlib.nullcontext
        self.start_step = self.stop_step  # once per run


def _annotation(trainer: Trainer) -> Any:
    return lambda: jax.profiler.StepTraceAnnotation(STEP_NAME, step_num=trainer.step)
