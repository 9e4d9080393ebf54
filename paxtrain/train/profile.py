"""`view.profile`: a `jax.profiler` trace of some training steps, in `RUN_DIR/profile/`.

    paxtrain fit configs/char_rnn.yaml view.profile.start_step=100 view.profile.num_steps=5
    tensorboard --logdir runs/char_rnn-.../profile     # with `pip install tensorboard-plugin-profile` (xprof)

Steps `start_step` to `start_step + num_steps - 1` (counted from 0) are traced, each wrapped in
`jax.profiler.StepTraceAnnotation("train", step_num=...)`, so the profiler shows them as steps.
Skip the first steps: they compile.

With `memory=True` (`trainer.profile.memory=true`) the hook also writes
`jax.profiler.save_device_memory_profile` after step `start_step` as
`RUN_DIR/profile/memory-step<N>.prof`: every live device buffer and where it was allocated, in
pprof's format (`pprof -http=: memory-step10.prof`).
"""

from __future__ import annotations

import contextlib

import jax

from paxtrain.errors import ArgumentError
from paxtrain.train.hooks import Hook, TrainerView

PROFILE_DIR = "profile"
STEP_NAME = "train"


class Profile(Hook):
    """Traces `num_steps` steps from step `start_step` into `RUN_DIR/profile/`.

    Args:
      start_step: the first traced step.
      num_steps: the number of traced steps.
      memory: also write a device memory profile after step `start_step`.

    Example:
        >>> trainer.add_hook(Profile(start_step=10, num_steps=3))  # doctest: +SKIP
    """

    def __init__(self, start_step: int, num_steps: int = 3, memory: bool = False):
        if start_step < 0 or num_steps < 1:
            raise ArgumentError(
                "start_step" if start_step < 0 else "num_steps",
                f"Profile needs start_step >= 0 and num_steps >= 1, got {start_step}, {num_steps}",
            )
        self.start_step, self.stop_step = start_step, start_step + num_steps
        self.tracing = False
        self.memory_step = start_step if memory else None

    def on_train_start(self, view: TrainerView) -> None:
        self._maybe_start(view)

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        if self.tracing and view.step >= self.stop_step:
            jax.block_until_ready(metrics)  # the traced steps' device work belongs in the trace
            self._stop(view)
        if self.memory_step is not None and view.step > self.memory_step:
            jax.block_until_ready(metrics)  # the step's buffers, not those of a step in flight
            self._save_memory_profile(view)
        self._maybe_start(view)

    def _save_memory_profile(self, view: TrainerView) -> None:
        directory = view.run_dir / PROFILE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        jax.profiler.save_device_memory_profile(str(directory / f"memory-step{view.step}.prof"))
        self.memory_step = None  # once per run

    def on_train_end(self, view: TrainerView) -> None:
        if self.tracing:
            self._stop(view)

    def _maybe_start(self, view: TrainerView) -> None:
        if not self.tracing and self.start_step <= view.step < self.stop_step:
            jax.profiler.start_trace(str(view.run_dir / PROFILE_DIR))
            self.tracing = True

    def _stop(self, view: TrainerView) -> None:
        jax.profiler.stop_trace()
        self.tracing = False
        self.start_step = self.stop_step  # once per run

    def step_context(self, view: TrainerView) -> contextlib.AbstractContextManager | None:
        """While tracing, each step call is a step of the trace."""
        if not self.tracing:
            return None
        return jax.profiler.StepTraceAnnotation(STEP_NAME, step_num=view.step)
