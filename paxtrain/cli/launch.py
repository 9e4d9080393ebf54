"""Submitting the jobs of a sweep through submitit: one Slurm job array, or local subprocesses.

`paxtrain fit CONFIG -m a=1,2 --launcher slurm` composes one config per sweep point, as the
in-process sweep does, and hands them to `submit_sweep`, which submits them in one
`executor.batch()`: on Slurm one `sbatch` of a job array (`#SBATCH --array=0-N%P`, at most
`array_parallelism` running at once), one array task per sweep point. Each task runs
`fit_from_config` on its config with `tasks_per_node` processes per node, started by `srun`,
which `paxtrain.parallel.initialize_distributed` joins into one run through `SLURM_*`.

submitit is optional: `pip install -e ".[launch]"`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paxtrain.errors import ConfigError, LaunchError

LAUNCHERS = ("local", "slurm")


# Launcher option -> submitit parameter. Options without a Slurm prefix apply to both executors;
# submitit's local executor ignores the `slurm_` ones, so one file can serve both.
EXECUTOR_PARAMETERS = {
    "timeout_min": "timeout_min",
    "nodes": "nodes",
    "tasks_per_node": "tasks_per_node",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "signal_delay_s": "slurm_signal_delay_s",
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "setup": "slurm_setup",
    "additional_parameters": "slurm_additional_parameters",
    "array_parallelism": "slurm_array_parallelism",
}


# A constructor argument in submitit, not an `update_parameters` one.
CONSTRUCTOR_PARAMETERS = {"max_num_timeout": "slurm_max_num_timeout"}


LAUNCHER_OPTIONS = (*EXECUTOR_PARAMETERS, *CONSTRUCTOR_PARAMETERS)


# Used where no launcher config is given; a `--launcher-config` file overrides them key by key.
# Slurm: one node of 8 GPUs, one process per GPU (see configs/launcher/slurm.yaml).
LAUNCHER_DEFAULTS: dict[str, dict[str, Any]] = {
    "local": {"timeout_min": 60, "nodes": 1, "tasks_per_node": 1},
    "slurm": {
        "timeout_min": 1440,
        "nodes": 1,
        "tasks_per_node": 8,
        "gpus_per_node": 8,
        "cpus_per_task": 12,
        "signal_delay_s": 120,
        "max_num_timeout": 3,
        "array_parallelism": 256,
    },
}


NO_SUBMITIT_MSG = """\
--launcher needs submitit, which is not installed: pip install -e ".[launch]" \
(or pip install "submitit>=1.5,<2")."""


NO_SLURM_MSG = "--launcher slurm submits with sbatch from a Slurm login node: {error}"


UNKNOWN_LAUNCHER_MSG = "unknown launcher {launcher!r}; choose one of: {valid}."


UNKNOWN_OPTION_MSG = """\
unknown launcher option{s} {unknown} in {source}; valid options: {valid}."""


NOT_A_MAPPING_MSG = "{source} must be a YAML mapping of launcher options, e.g. `timeout_min: 60`."


JOB_FAILED_MSG = """\
sweep job {index} (submitit job {job_id}, run directory {run_dir}) failed; its log: {log}
{error}"""


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as error:
        raise ConfigError(NO_SUBMITIT_MSG) from error
    return submitit


def launcher_options(launcher: str, config_path: str | pathlib.Path | None = None) -> dict:
    """The launcher options of `launcher`: its defaults, updated by a launcher YAML file if given.

    Args:
      launcher: "local" or "slurm".
      config_path: a YAML mapping of options (see `LAUNCHER_OPTIONS`), or None.

    Returns:
      A dict of launcher options; raises ConfigError naming the valid options for an unknown one.

    Example:
        >>> launcher_options("local")["tasks_per_node"]
        1
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(
            UNKNOWN_LAUNCHER_MSG.format(launcher=launcher, valid=", ".join(LAUNCHERS))
        )
    options = dict(LAUNCHER_DEFAULTS[launcher])
    if config_path is not None:
        path = pathlib.Path(config_path)
        if not path.is_file():
            raise ConfigError(f"launcher config {path} does not exist")
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(loaded, dict):
            raise ConfigError(NOT_A_MAPPING_MSG.format(source=path))
        options.update(check_options(loaded, source=str(path)))
    return options


def check_options(options: Mapping[str, Any], source: str = "the launcher options") -> dict:
    """`options` as a dict, or a ConfigError that names the unknown keys and the valid ones.

    Example:
        >>> check_options({"timeout_min": 10})
        {'timeout_min': 10}
    """
    unknown = sorted(set(options) - set(LAUNCHER_OPTIONS))
    if unknown:
        raise ConfigError(
            UNKNOWN_OPTION_MSG.format(
                s="s" if len(unknown) > 1 else "",
                unknown=", ".join(map(repr, unknown)),
                source=source,
                valid=", ".join(LAUNCHER_OPTIONS),
            )
        )
    return dict(options)


class FitJob:
    """One sweep point as a picklable callable: the config travels as YAML, rebuilt in the job.

    The job runs through `cli.sweep_results.run_sweep_job` (its outcome in its run directory),
    then rewrites the sweep's table: the last job of a Slurm array to end leaves it whole.
    submitit calls `checkpoint` when Slurm is about to stop the job (the timeout's signal or a
    preemption); it requeues the same job, and `fit_from_config` resumes from the newest
    checkpoint in the run directory (paxtrain saves one on the SIGTERM that comes with requeue).

    Example:
        >>> job = FitJob(OmegaConf.to_yaml(cfg), "configs/char_rnn.yaml", os.getcwd(), [])  # doctest: +SKIP
        >>> job()["run_dir"]  # doctest: +SKIP
        'runs/char_rnn-multirun-20260101-120000/0_optimizer.learning_rate.peak_value=1e-3'
    """

    def __init__(
        self,
        config_yaml: str,
        config_path: str,
        workdir: str,
        sys_path: list[str],
        job: int = 0,
        overrides: Sequence[str] = (),
        sweep: str = "",
        restart: bool = False,
    ):
        self.config_yaml = config_yaml
        self.config_path = config_path
        self.workdir = workdir
        self.sys_path = sys_path
        self.job, self.overrides, self.sweep = job, list(overrides), sweep
        self.restart = restart  # `--restart`: what `fit_from_config` does where none is readable

    def __call__(self) -> dict[str, Any]:
        from paxtrain.cli.sweep_results import (
            enter_sweep_start,
            objective,
            records_here,
            run_sweep_job,
            write_summary,
        )
        from paxtrain.config.schema import validate

        enter_sweep_start(self.workdir, self.sys_path)
        cfg = validate(OmegaConf.create(self.config_yaml))
        outcome = run_sweep_job(
            self.job, self.overrides, cfg.run_dir, self.config_path, cfg, self.sweep, self.restart
        )
        if records_here():
            write_summary(pathlib.Path(cfg.run_dir).parent, objective(cfg).mode)
        return dataclasses.asdict(outcome)

    def checkpoint(self) -> Any:
        return _submitit().helpers.DelayedSubmission(self)


def submit_sweep(
    configs: Sequence[DictConfig],
    config_path: str,
    launcher: str,
    options: Mapping[str, Any] | None = None,
    overrides: Sequence[Sequence[str]] | None = None,
    sys_path: Sequence[str] = (),
    restart: bool = False,
) -> list[Any]:
    """Submits one job per config through submitit, all in one batch (on Slurm, one job
    array); `wait_for_sweep` waits for local ones.

    Each config must have its `run_dir` set (`paxtrain.cli.sweep.assign_sweep_dirs`); submitit's
    files and logs go to `submitit/<job id>/` in the sweep directory, the parent of the run
    directories. Job ids are printed as they are submitted.

    Args:
      configs: the composed, validated config of each sweep point.
      config_path: the YAML file they were composed from, recorded in each run's run.json.
      launcher: "local" (subprocesses on this machine) or "slurm".
      options: launcher options (`launcher_options`); None for the launcher's defaults.
      overrides: each job's overrides, for the sweep's table.
      sys_path: entries each job puts in front of `sys.path`, for the config's `_target_`s.
      restart: `--restart`, passed on to every job (`run_sweep_job`).

    Returns:
      The submitit jobs, in the order of `configs`.

    Example:
        >>> jobs = submit_sweep(configs, "configs/char_rnn.yaml", "slurm")  # doctest: +SKIP
        paxtrain: submitted sweep job 0 as submitit job 4242_0 (slurm): runs/.../0_optimizer.learning_rate.peak_value=1e-3
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(
            UNKNOWN_LAUNCHER_MSG.format(launcher=launcher, valid=", ".join(LAUNCHERS))
        )
    from paxtrain.cli.sweep_results import new_sweep_id

    submitit = _submitit()
    options = check_options(LAUNCHER_DEFAULTS[launcher] if options is None else options)
    workdir = os.getcwd()
    # Absolute, so that the jobs find them whatever directory they start in.
    configs = [cfg.copy() for cfg in configs]
    for cfg in configs:
        cfg.run_dir = str(pathlib.Path(cfg.run_dir).resolve())
    sweep_dir = pathlib.Path(configs[0].run_dir).parent if configs else pathlib.Path(workdir)
    constructor = {
        CONSTRUCTOR_PARAMETERS[k]: v for k, v in options.items() if k in CONSTRUCTOR_PARAMETERS
    }
    try:
        executor = submitit.AutoExecutor(
            folder=sweep_dir / "submitit" / "%j", cluster=launcher, **constructor
        )
    except RuntimeError as error:  # submitit's "Could not detect srun" off a Slurm cluster
        raise ConfigError(NO_SLURM_MSG.format(error=error)) from None
    parameters = {EXECUTOR_PARAMETERS[k]: v for k, v in options.items() if k in EXECUTOR_PARAMETERS}
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})

    executor.update_parameters(name=f"paxtrain-{configs[0].name}" if configs else "paxtrain")
    path = str(pathlib.Path(config_path).resolve())
    sweep = new_sweep_id()
    start = (path, workdir, list(sys_path))  # the config, and where each job starts
    with executor.batch():  # one submission: a Slurm job array, its tasks in `configs`' order
        jobs = [
            executor.submit(FitJob(OmegaConf.to_yaml(cfg), *start, index, job, sweep, restart))
            for index, (cfg, job) in enumerate(zip(configs, overrides or [[]] * len(configs)))
        ]
    for index, (job, cfg) in enumerate(zip(jobs, configs)):
        print(
            f"paxtrain: submitted sweep job {index} as submitit job {job.job_id} ({launcher}): {cfg.run_dir}"
        )
    return jobs


def wait_for_sweep(jobs: Sequence[Any], configs: Sequence[DictConfig]) -> int:
    """Waits for a sweep's local jobs, prints its result table, and returns its exit code;
    a job that failed (or crashed) raises LaunchError naming it and its log, after the table.

    Example:
        >>> wait_for_sweep(submit_sweep(configs, "configs/char_rnn.yaml", "local"), configs)  # doctest: +SKIP
        0
    """
    from paxtrain.cli.sweep_results import FAILED, objective, report_sweep

    # The jobs run at once, so one failing leaves the others running: all are waited for,
    # then every failure is reported with its log.
    failures = []
    for index, (job, cfg) in enumerate(zip(jobs, configs)):
        try:
            outcome = job.result()
            cause = outcome["message"] if outcome["outcome"] == FAILED else None
        except Exception as error:
            cause = _cause(str(error))
        if cause is not None:
            failures.append(
                JOB_FAILED_MSG.format(
                    index=index, job_id=job.job_id, run_dir=cfg.run_dir, log=job.paths.stderr,
                    error=cause,
                )
            )  # fmt: skip
    code = report_sweep(pathlib.Path(configs[0].run_dir).parent, objective(configs[0]).mode)
    if failures:
        raise LaunchError("\n".join(failures))
    return code


def _cause(text: str, count: int = 3) -> str:
    # submitit's error is "... with trace:", the job's traceback between two dashed lines, then
    # where its logs are (named above already): the traceback's last lines name the cause.
    parts = text.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else text
    return "\n".join(trace.strip().splitlines()[-count:])
