"""Where logged scalars go: TensorBoard event files and `metrics.jsonl` in the run directory."""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Writes one record per logged step to TensorBoard (tensorboardX) and to `metrics.jsonl`.

    `metrics.jsonl` stays strict JSON: a NaN or infinite value is written as `null` and its key
    listed under `"nonfinite"`. A step logged again (after a rollback, or a resume from a
    checkpoint older than the last log) gets `"repeated": true`; `latest_by_step` keeps the
    last record of each step.

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
        previous = self.run_dir / METRICS_FILE
        # The newest step logged and its keys: a record is a repeat when it goes back in steps,
        # or logs a key again at the newest step (the same step's eval after its train record
        # is not one).
        self._last_step, self._last_keys = -1, set()
        for record in read_metrics(self.run_dir) if previous.is_file() else []:
            self._note(record["step"], record)
        self._jsonl = open(previous, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.run_dir), flush_secs=10)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Records `scalars` at `step` in both sinks."""
        if self._jsonl is None:
            return
        record: dict[str, Any] = {"step": step}
        nonfinite = []
        for key, value in scalars.items():
            value = float(value)
            record[key] = value if math.isfinite(value) else None
            if not math.isfinite(value):
                nonfinite.append(key)
            if self._tb is not None:
                self._tb.add_scalar(key, value, global_step=step)
        if nonfinite:
            record["nonfinite"] = nonfinite
        if step < self._last_step or (step == self._last_step and self._last_keys & scalars.keys()):
            record["repeated"] = True
        self._note(step, scalars)
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")

    def _note(self, step: int, keys: Any) -> None:
        if step > self._last_step:
            self._last_step, self._last_keys = step, set()
        if step == self._last_step:
            self._last_keys |= set(keys) - {"step", "repeated", "nonfinite"}

    def flush(self) -> None:
        if self._jsonl is None:
            return
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Closes both sinks, the second even when the first fails (a full disk)."""
        if self._jsonl is None:
            return
        sinks, self._jsonl, tb, self._tb = [self._jsonl], None, self._tb, None
        errors = []
        for sink in [*sinks, *([tb] if tb is not None else [])]:
            try:
                sink.close()
            except OSError as error:
                errors.append(error)
        if errors:
            raise errors[0]

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
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a full disk
            records.append(json.loads(line))
    return records


def latest_by_step(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """The `(step, value)` points of `key`, one per step (the last one logged: after a rollback
    or a resume a step can be logged twice), in step order, without null (non-finite) values.

    Example:
        >>> latest_by_step([{"step": 2, "a": 1.0}, {"step": 2, "a": 3.0}, {"step": 1, "a": None}], "a")
        [(2, 3.0)]
    """
    points: dict[int, Any] = {}
    for record in records:
        if key in record:
            points[record["step"]] = record[key]
    return [(s, v) for s, v in sorted(points.items()) if isinstance(v, (int, float))]
