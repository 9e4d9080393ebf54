"""`default_hooks`: the built-in hooks of a training run, assembled in one place that the
`paxtrain` command line and the Python API both call."""

from __future__ import annotations

from collections.abc import Iterable

from paxtrain.train.checkpointing import Checkpointing
from paxtrain.train.hooks import (
    EarlyStopping,
    Evaluation,
    Hook,
    PlotCurves,
    Throughput,
    TrainMetrics,
)
from paxtrain.train.nonfinite import NonFinitePolicy
from paxtrain.train.progress import Progress
from paxtrain.train.utilization import Utilization
from paxtrain.train.watchdog import Watchdog


def default_hooks(
    *,
    log_every: int = 50,
    eval_every: int | None = None,
    on_nonfinite: str = "skip",
    rollback_lr_factor: float = 0.5,
    progress: str = "auto",
    plot: bool = True,
    early_stopping: EarlyStopping | None = None,
    checkpointing: Checkpointing | None = None,
    peak_tflops: float | None = None,
    watchdog: float | None = None,
    watchdog_min_seconds: float = 60.0,
    hooks: Iterable[Hook] = (),
) -> list[Hook]:
    """The hooks of a training run: training metrics, throughput and utilisation (MFU, memory)
    every `log_every` steps, evaluation, early stopping, the non-finite policy, progress,
    checkpoints, the plot, and `hooks` besides. Pass the result as `Trainer(hooks=...)`.

    Args:
      log_every: steps between logged training metrics.
      eval_every: steps between evaluations (None: only at the end).
      on_nonfinite: what a step with a NaN/Inf loss or gradient does: "skip" it (counted in
        `train/skipped_steps`; after 50 skipped in a row training stops, stuck), "stop"
        training, or "rollback" to the newest checkpoint, skipping the batches since then and
        scaling the learning rate by `rollback_lr_factor`. Detected at log steps, so within
        `log_every` steps. "none": no policy (the step's guard is off too: `StepSettings`).
      rollback_lr_factor: learning-rate factor applied at each rollback.
      progress: "auto", "bar", "log" or "off".
      plot: write `curves.png` at the end.
      early_stopping: an `EarlyStopping` hook, or None.
      checkpointing: a `Checkpointing` hook (saves; the trainer resumes from its store), or None.
      peak_tflops: peak TFLOP/s of one device for `perf/mfu`; None: the table's
        (`telemetry.peak_flops`), no MFU for a device kind not in it.
      watchdog: exit with code 86 and every thread's stack when no step finishes within this
        multiple of the median step time (`train.watchdog.Watchdog`); None: no watchdog.
      watchdog_min_seconds: the watchdog's shortest limit.
      hooks: more hooks.

    Example:
        >>> [type(h).__name__ for h in default_hooks(progress="off", plot=False)]
        ['TrainMetrics', 'Throughput', 'Utilization', 'Evaluation', 'NonFinitePolicy', 'Progress']
    """
    return [
        TrainMetrics(log_every),
        Throughput(log_every),
        Utilization(log_every, peak_tflops),
        Evaluation(eval_every),
        *([early_stopping] if early_stopping else []),
        *(
            [NonFinitePolicy(on_nonfinite, log_every, rollback_lr_factor)]
            if on_nonfinite != "none"
            else []
        ),
        Progress(progress),
        *([Watchdog(watchdog, watchdog_min_seconds)] if watchdog is not None else []),
        *hooks,
        *([checkpointing] if checkpointing else []),  # `order` runs it after the hooks added
        *([PlotCurves()] if plot else []),  # and this after it
    ]
