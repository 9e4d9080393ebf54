"""One sweep job run to its outcome, and the sweep's result table.

Whatever runs the jobs of a sweep (paxtrain's grid in this process, submitit's jobs, a Hydra
sweeper or launcher plugin), each job goes through `run_sweep_job`: it fits as `paxtrain fit`
does, catches the problems `paxtrain fit` would report in one line (so one job's bad data does
not end the sweep), writes its outcome to `outcome.json` in its run directory and its
hyperparameters and final metrics as TensorBoard HParams (`hparams/` in the run directory).
`write_summary` gathers the outcomes of a sweep directory into `summary.csv` and `summary.md`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import fcntl
import io
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from paxtrain.errors import ConfigError, PaxtrainError
from paxtrain.train.monitor import Monitor

OUTCOME_FILE = "outcome.json"


SUMMARY_FILES = ("summary.csv", "summary.md")


FINISHED, STOPPED_EARLY, FAILED, PREEMPTED = "finished", "stopped early", "failed", "preempted"


TWO_OBJECTIVES_MSG = (
    "A sweep has one objective, and this config monitors two metrics: "
    "trainer.checkpoint.monitor={checkpoint} and trainer.early_stopping.monitor={early}: "
    "monitor the same metric in both (or set one of them)."
)


TWO_MODES_MSG = (
    "trainer.checkpoint.mode={checkpoint} and trainer.early_stopping.mode={early} disagree on "
    "which way `{metric}` is better, the sweep's objective: set both to the same mode."
)


JOB_FAILED_MSG = "paxtrain: sweep job {job} ({run_dir}) failed: {message}"


SUMMARY_MSG = "paxtrain: sweep of {count} jobs ({counts}); the table: {path}"


@dataclasses.dataclass
class JobOutcome:
    """How one job of a sweep ended, as `outcome.json` in its run directory records it.

    Attributes:
      job: the job's number in the sweep.
      overrides: the job's overrides.
      outcome: "finished", "stopped early", "failed" or "preempted".
      metric: the objective's key (e.g. "eval/loss").
      value: its final value; None when the job has none (failed, never evaluated).
      message: why a job failed or stopped, in one line.
      run_dir: the job's run directory.
      exit_code: what `paxtrain fit` alone would have exited with.
      sweep: when the sweep started (`new_sweep_id`): a sweep directory used again shows
        the newest sweep's jobs only.
    """

    job: int
    overrides: list[str]
    outcome: str
    metric: str
    value: float | None
    message: str
    run_dir: str
    exit_code: int
    sweep: str = ""


def new_sweep_id() -> str:
    """An id for a sweep about to start, which sorts after those of earlier sweeps.

    Example:
        >>> len(new_sweep_id())
        26
    """
    return datetime.datetime.now().isoformat(timespec="microseconds")


def objective(cfg: DictConfig) -> Monitor:
    """The metric a sweep optimizes: the config's monitored one (`trainer.checkpoint.monitor`,
    or `trainer.early_stopping.monitor`, which bounds a bad job), else `eval/loss` (min).

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"trainer": {
        ...     "checkpoint": {"monitor": None, "mode": "min"},
        ...     "early_stopping": {"monitor": "eval/accuracy", "mode": "max"}}})
        >>> objective(cfg)
        Monitor(metric='accuracy', mode='max')
    """
    checkpoint, early = cfg.trainer.checkpoint, cfg.trainer.early_stopping
    if checkpoint.monitor and early.monitor:
        first, second = Monitor(checkpoint.monitor, checkpoint.mode), Monitor(early.monitor)
        if first.name != second.name:
            raise ConfigError(
                TWO_OBJECTIVES_MSG.format(checkpoint=checkpoint.monitor, early=early.monitor)
            )
        if str(checkpoint.mode) != str(early.mode):
            raise ConfigError(
                TWO_MODES_MSG.format(checkpoint=checkpoint.mode, early=early.mode, metric=first.key)
            )
    for section in (checkpoint, early):
        if section.monitor:
            return Monitor(section.monitor, str(section.mode))
    return Monitor("eval/loss", "min")


def run_sweep_job(
    job: int,
    overrides: Sequence[str],
    run_dir: str,
    config_path: str,
    config: Any,
    sweep: str = "",
    restart: bool = False,
) -> JobOutcome:
    """Runs one job of a sweep as `paxtrain fit` runs it (`cli.fit.fit_from_config`), and
    records its outcome; a problem that `paxtrain fit` reports in one line fails this job only.

    Args:
      job: the job's number in the sweep.
      overrides: the job's overrides, as recorded in the table.
      run_dir: the job's run directory (its config's `run_dir`).
      config_path: the YAML file the job's config was composed from.
      config: the job's config with its `run_dir` set, or a function returning it (where
        building it may fail: a trial's config validated in the job).
      sweep: the sweep's id (`new_sweep_id`).
      restart: `--restart`: the job may start from step 0 where its run directory has no
        readable checkpoint (`fit_from_config`).

    Returns:
      The job's `JobOutcome`, also written to `outcome.json` in its run directory.

    Example:
        >>> outcome = run_sweep_job(0, ["seed=1"], "runs/s/0_seed=1", "configs/char_rnn.yaml", cfg)  # doctest: +SKIP
        >>> outcome.outcome, outcome.metric  # doctest: +SKIP
        ('finished', 'eval/loss')
    """
    from paxtrain.cli.fit import exit_code, fit_from_config

    try:
        cfg = config() if callable(config) else config
        monitor = objective(cfg)
        trainer = fit_from_config(cfg, config_path=config_path, restart=restart)
    except PaxtrainError as error:
        message = " ".join(str(error).split())
        outcome = JobOutcome(job, list(overrides), FAILED, "", None, message, run_dir, 2, sweep)
        print(
            JOB_FAILED_MSG.format(job=job, run_dir=run_dir, message=message),
            file=sys.stderr,
        )
    else:
        outcome = _outcome(job, overrides, cfg, monitor, trainer, exit_code(trainer))
        outcome.sweep = sweep
    if records_here():
        _record(outcome)
    return outcome


def enter_sweep_start(workdir: str, sys_path: Sequence[str]) -> None:
    """Makes the process of a job that a launcher started (submitit, a Hydra launcher plugin,
    maybe on another machine) work as the process that started the sweep: in its directory,
    where the config's relative paths resolve, with its import paths in front of `sys.path`,
    where the config's `_target_`s are imported from.

    Example:
        >>> enter_sweep_start(os.getcwd(), [])
    """
    os.chdir(workdir)
    sys.path[:0] = [p for p in sys_path if p not in sys.path]


def records_here() -> bool:
    """Whether this process writes a job's records: the first of a multi-process run (each
    Slurm task of a job runs the same job), or the only one.

    Example:
        >>> records_here()
        True
    """
    import jax

    return jax.process_index() == 0


def _outcome(
    job: int, overrides: Sequence[str], cfg: DictConfig, monitor: Monitor, trainer: Any, code: int
) -> JobOutcome:
    from paxtrain.cli.fit import NONFINITE_EVAL_MSG

    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    value = final.get(monitor.name)
    if trainer.preempted:
        outcome, message = PREEMPTED, trainer.stop_reason or ""
    elif code:
        outcome = FAILED
        message = trainer.stop_reason or NONFINITE_EVAL_MSG.removeprefix("paxtrain: ")
    elif trainer.stop_reason:
        outcome, message = STOPPED_EARLY, trainer.stop_reason
    else:
        outcome, message = FINISHED, ""
    value = float(value) if value is not None and math.isfinite(value) else None
    return JobOutcome(job, list(overrides), outcome, monitor.key, value, message, cfg.run_dir, code)


def _record(outcome: JobOutcome) -> None:
    """`outcome.json`, and the job's hyperparameters (its overrides) and final metric for
    TensorBoard's HParams tab (`tensorboard --logdir SWEEP_DIR` compares the runs)."""
    from tensorboardX import SummaryWriter

    run_dir = pathlib.Path(outcome.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / OUTCOME_FILE).write_text(json.dumps(dataclasses.asdict(outcome), indent=1))
    hparams: dict[str, Any] = {"outcome": outcome.outcome}
    for override in outcome.overrides:
        key, _, value = override.partition("=")
        hparams[key.lstrip("+~")] = _hparam_value(value)
    metrics = {f"final/{outcome.metric}": outcome.value} if outcome.value is not None else {}
    with SummaryWriter(logdir=str(run_dir / "hparams")) as writer:
        writer.add_hparams(hparams, metrics, name=".")


def _hparam_value(text: str) -> bool | int | float | str:
    """An override's value as TensorBoard's HParams take it: a number where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_outcomes(sweep_dir: str | pathlib.Path) -> list[JobOutcome]:
    """The outcomes recorded in a sweep directory's run directories by its newest sweep, by
    job number.

    Example:
        >>> read_outcomes("runs/char_rnn-multirun-20260101-120000")[0].outcome  # doctest: +SKIP
        'finished'
    """
    found = [
        JobOutcome(**json.loads(path.read_text()))
        for path in pathlib.Path(sweep_dir).glob(f"*/{OUTCOME_FILE}")
    ]
    newest = max((outcome.sweep for outcome in found), default="")
    return sorted((o for o in found if o.sweep == newest), key=lambda outcome: outcome.job)


def summary_table(outcomes: Sequence[JobOutcome], mode: str = "min") -> tuple[str, str]:
    """The result table of a sweep as CSV and as Markdown: each job's overrides (those that
    differ between jobs), outcome, final objective value and run directory; the best job is
    marked with `*`.

    Example:
        >>> jobs = [JobOutcome(i, [f"seed={i}", "x=1"], "finished", "eval/loss", v, "", f"r/{i}", 0)
        ...         for i, v in enumerate([2.5, 2.25])]
        >>> print(summary_table(jobs)[1])
        | job | overrides | outcome | eval/loss | run_dir |
        |---|---|---|---|---|
        | 0 | seed=0 | finished | 2.5 | r/0 |
        | 1 | seed=1 | finished | 2.25 * | r/1 |
    """
    shared = set.intersection(*(set(o.overrides) for o in outcomes)) if len(outcomes) > 1 else set()
    values = [o.value for o in outcomes if o.value is not None]
    best = (min if mode == "min" else max)(values) if values else None
    metric = next((o.metric for o in outcomes if o.metric), "metric")
    rows = []
    for o in outcomes:
        swept = " ".join(x for x in o.overrides if x not in shared)
        outcome = f"{o.outcome}: {o.message}" if o.message else o.outcome
        value = "" if o.value is None else f"{o.value:.6g}"
        rows.append([str(o.job), swept, outcome, value, o.run_dir])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["job", "overrides", "outcome", metric, "run_dir"])
    writer.writerows(rows)
    lines = [f"| job | overrides | outcome | {metric} | run_dir |", "|---|---|---|---|---|"]
    for row, o in zip(rows, outcomes):
        mark = " *" if best is not None and o.value == best else ""
        cells = [row[0], row[1], row[2].replace("|", "\\|"), row[3] + mark, row[4]]
        lines.append("| " + " | ".join(cells) + " |")
    return out.getvalue(), "\n".join(lines)


def write_summary(sweep_dir: str | pathlib.Path, mode: str = "min") -> str:
    """Writes `summary.csv` and `summary.md` in a sweep directory from its jobs' outcomes;
    returns the Markdown table. Jobs finishing at once (a job array) each rewrite it under a
    lock, so the last one to finish leaves the whole table.

    Example:
        >>> print(write_summary("runs/char_rnn-multirun-20260101-120000"))  # doctest: +SKIP
    """
    sweep_dir = pathlib.Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(sweep_dir, os.O_RDONLY)  # the directory itself: no lock file left beside
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tables = summary_table(read_outcomes(sweep_dir), mode)
        for name, text in zip(SUMMARY_FILES, tables):
            partial = sweep_dir / f".{name}.partial"
            partial.write_text(text + ("" if text.endswith("\n") else "\n"))
            os.replace(partial, sweep_dir / name)
    finally:
        os.close(lock)  # and with it the lock
    return tables[1]


def report_sweep(sweep_dir: str | pathlib.Path, mode: str = "min") -> int:
    """Prints a sweep's result table and where it is written; returns the sweep's exit code:
    the largest of its jobs' (75 when one was preempted: run it again), 0 when all finished.

    Example:
        >>> report_sweep("runs/char_rnn-multirun-20260101-120000")  # doctest: +SKIP
        0
    """
    table = write_summary(sweep_dir, mode)
    outcomes = read_outcomes(sweep_dir)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    print(table)
    shown = ", ".join(f"{n} {name}" for name, n in counts.items())
    print(
        SUMMARY_MSG.format(
            count=len(outcomes), counts=shown, path=pathlib.Path(sweep_dir) / "summary.md"
        )
    )
    codes = [o.exit_code for o in outcomes]
    from paxtrain.train.preemption import PREEMPTED_EXIT_CODE

    return PREEMPTED_EXIT_CODE if PREEMPTED_EXIT_CODE in codes else max(codes, default=0)
