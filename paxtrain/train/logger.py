"""Where logged scalars go: TensorBoard event files and `metrics.jsonl` in the run directory."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Writes one record per logged step to TensorBoard (tensorboardX) and to `metrics.jsonl`.

    Args:
      run_dir: directory for `metrics.jsonl` and the `events.out.tfevents.*` files.
      tensorboard: also write TensorBoard event files.
      enabled: False makes every method a no-op (the other processes of a multi-process run).

    Example:
        >>> with MetricsLogger("runs/demo") as logger:   # doctest: +SKIP
        ...     logger.write(10, {"train/loss": 2.5})
    """

    def __init__(self, run_dir: str | pathlib.Path, tensorboard: bool = True, enabled: bool = True):
        self.run_dir = pathlib.Path(run_dir)
        self._jsonl: Any = None
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.run_dir), flush_secs=10)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Records `scalars` at `step` in both sinks."""
        if self._jsonl is None:
            return
        record: dict[str, Any] = {"step": step}
        for key, value in scalars.items():
            value = float(value)
            record[key] = value if math.isfinite(value) else str(value)
            if self._tb is not None:
                self._tb.add_scalar(key, value, global_step=step)
        self._jsonl.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self._jsonl is None:
            return
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is None:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(run_dir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl` in a run directory.

    Example:
        >>> [r["train/loss"] for r in read_metrics("runs/demo") if "train/loss" in r]  # doctest: +SKIP
    """
    path = pathlib.Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {METRICS_FILE} in {run_dir}: is it a paxtrain run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
