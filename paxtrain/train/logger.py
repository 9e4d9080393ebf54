"""Where logged scalars go: a `Logger` per sink (TensorBoard, `metrics.jsonl`, MLflow, W&B).

`Trainer(loggers=["tensorboard", "jsonl", "mlflow"])`, or `trainer.loggers=[...]` in a config,
names the sinks; a name is an entry of `LOGGERS`, and an object with the `Logger` methods works
too. Every logger is started once with the run directory and the run's hyperparameters (the
resolved config under `paxtrain fit`), then gets each step's scalars. Only the main process of
a multi-process run logs.

    >>> import tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> with LoggerGroup(["jsonl"], run_dir, hyperparams={"seed": 0}) as group:
    ...     group.write(10, {"train/loss": 2.5})
    >>> read_metrics(run_dir)
    [{'step': 10, 'train/loss': 2.5}]
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from paxtrain.errors import ArgumentError
from paxtrain.train.sink import Logger
from paxtrain.train.trackers import MLflowLogger, WandbLogger

METRICS_FILE = "metrics.jsonl"

DEFAULT_LOGGERS = ("tensorboard", "jsonl")

UNKNOWN_LOGGER_MSG = "Unknown logger {name!r}; choose from {choices}, or pass a Logger object."
MISSING_EXTRA_MSG = (
    "The {name!r} logger needs the {package!r} package: `pip install {package}` "
    '(or `pip install "paxtrain[{name}]"`).'
)
# The package each optional logger imports.
_EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}


class JsonlLogger(Logger):
    """One JSON record per logged step in `RUN_DIR/metrics.jsonl` (appended on a resume).

    The file stays strict JSON: a NaN or infinite value is written as `null` and its key listed
    under `"nonfinite"`. A step logged again (after a rollback, or a resume from a checkpoint
    older than the last log) gets `"repeated": true`; `latest_by_step` keeps the last record of
    each step.
    """

    def start(self, run_dir: pathlib.Path, hyperparams: Mapping[str, Any]) -> None:
        path = run_dir / METRICS_FILE
        # The newest step logged and its keys: a record is a repeat when it goes back in steps,
        # or logs a key again at the newest step (the same step's eval after its train record
        # is not one).
        self._last_step, self._last_keys = -1, set()
        for record in read_metrics(run_dir) if path.is_file() else ():
            self._note(record["step"], record)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        record: dict[str, Any] = {"step": step}
        nonfinite = []
        for key, value in scalars.items():
            value = float(value)
            record[key] = value if math.isfinite(value) else None
            if not math.isfinite(value):
                nonfinite.append(key)
        if nonfinite:
            record["nonfinite"] = nonfinite
        if step < self._last_step or (step == self._last_step and self._last_keys & scalars.keys()):
            record["repeated"] = True
        self._note(step, scalars)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")

    def _note(self, step: int, keys: Iterable[str]) -> None:
        if step > self._last_step:
            self._last_step, self._last_keys = step, set()
        if step == self._last_step:
            self._last_keys |= set(keys) - {"step", "repeated", "nonfinite"}

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger(Logger):
    """TensorBoard event files (tensorboardX) in the run directory; the hyperparameters as the
    text summary `hyperparams` (JSON)."""

    def start(self, run_dir: pathlib.Path, hyperparams: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(run_dir), flush_secs=10)
        if hyperparams:
            text = json.dumps(hyperparams, indent=2, default=str)
            self._writer.add_text("hyperparams", f"```\n{text}\n```", global_step=0)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, float(value), global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


# Names usable in `Trainer(loggers=...)` and `trainer.loggers=[...]`; the trackers need the
# `mlflow` / `wandb` extras and import them only when used.
LOGGERS: dict[str, Callable[[], Logger]] = {
    "jsonl": JsonlLogger,
    "tensorboard": TensorBoardLogger,
    "mlflow": MLflowLogger,
    "wandb": WandbLogger,
}


def check_logger_name(name: str) -> None:
    """Raises ValueError unless `name` is in `LOGGERS` and its package is installed.

    Example:
        >>> check_logger_name("jsonl")
    """
    import importlib.util

    if name not in LOGGERS:
        raise ValueError(UNKNOWN_LOGGER_MSG.format(name=name, choices=sorted(LOGGERS)))
    package = _EXTRAS.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(MISSING_EXTRA_MSG.format(name=name, package=package))


PLOT_WITHOUT_JSONL_MSG = (
    "the plot hook draws curves.png from metrics.jsonl, which only the jsonl logger writes, and "
    "`loggers` is {loggers}: add jsonl to `loggers`, or turn the plot off (plot=false)."
)


DUPLICATE_LOGGER_MSG = (
    "`loggers` names {name} twice: each logger would write every record again (metrics.jsonl "
    "with each step twice); name it once."
)


def check_loggers(loggers: Iterable[Any], plots: bool) -> None:
    """Raises `ArgumentError("loggers" or "plot", ...)` for loggers that cannot work together:
    a name given twice, or a plot (`plots`: `PlotCurves` among the hooks) without the jsonl
    logger whose `metrics.jsonl` it reads. Checked when the trainer is made, not when the plot
    finds no file after the whole run.

    Example:
        >>> check_loggers(["tensorboard", "jsonl"], plots=True)
        >>> check_loggers(["tensorboard"], plots=True)
        Traceback (most recent call last):
        paxtrain.errors.ArgumentError: the plot hook draws curves.png from metrics.jsonl, ...
    """
    loggers = list(loggers)
    names = [entry for entry in loggers if isinstance(entry, str)]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise ArgumentError("loggers", DUPLICATE_LOGGER_MSG.format(name=twice))
    jsonl = any(entry == "jsonl" or isinstance(entry, JsonlLogger) for entry in loggers)
    if plots and not jsonl:
        raise ArgumentError("plot", PLOT_WITHOUT_JSONL_MSG.format(loggers=loggers))


def make_logger(logger: str | Logger) -> Logger:
    """A logger from its name in `LOGGERS`, or the logger object itself.

    Example:
        >>> type(make_logger("jsonl")).__name__
        'JsonlLogger'
    """
    if not isinstance(logger, str):
        return logger
    check_logger_name(logger)
    return LOGGERS[logger]()


class LoggerGroup:
    """The loggers of a run, written together; started when created.

    Args:
      loggers: names (see `LOGGERS`) or `Logger` objects; empty on the processes that do not log.
      run_dir: the run directory (created if missing).
      hyperparams: recorded by each logger at the start.
    """

    def __init__(
        self,
        loggers: Iterable[str | Logger],
        run_dir: str | pathlib.Path,
        hyperparams: Mapping[str, Any] | None = None,
    ):
        self.loggers = [make_logger(logger) for logger in loggers]
        if self.loggers:
            run_dir = pathlib.Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        for logger in self.loggers:
            logger.start(pathlib.Path(run_dir), dict(hyperparams or {}))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.write(step, scalars)

    def flush(self) -> None:
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        """Closes every logger, the others even when one fails (a full disk)."""
        errors = []
        for logger in self.loggers:
            try:
                logger.close()
            except OSError as error:
                errors.append(error)
        self.loggers = []
        if errors:
            raise errors[0]

    def __enter__(self) -> LoggerGroup:
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
