"""What a metrics sink implements: the `Logger` base class, which the built-in loggers
(`train.logger`) and the experiment trackers (`train.trackers`) both derive from.

    >>> class Printer(Logger):
    ...     def write(self, step, scalars):
    ...         print(step, dict(scalars))
    >>> Printer().write(10, {"train/loss": 2.5})
    10 {'train/loss': 2.5}
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any


class Logger:
    """Base class of a metrics sink; override what the sink needs.

    A tracker that keeps a run of its own (MLflow, W&B) stores its run id in the run directory
    at `start` and continues that run when the directory is resumed.
    """

    def start(self, run_dir: pathlib.Path, hyperparams: Mapping[str, Any]) -> None:
        """Opens the sink before the first step (also on a resume) and records hyperparameters."""

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Records the scalars of one step."""

    def flush(self) -> None:
        """Makes what was written so far readable (e.g. before a plot is drawn)."""

    def close(self) -> None:
        """Flushes and releases the sink at the end of training."""
