"""`paxtrain fit CONFIG -m ...` through Hydra's own multirun, for Hydra's sweeper and launcher
plugins.

When a sweep names Hydra's config (`hydra/sweeper=optuna`, `hydra/launcher=joblib`,
`hydra.sweeper.n_trials=20`...), paxtrain hands it to Hydra: a `@hydra.main` application built
at run time on the same YAML file (and the schema `config.composition` puts under it), whose
task function (`HydraSweepTask`) validates each job's config, fits it as `paxtrain fit` does
(`cli.sweep_results.run_sweep_job`) and returns the final value of the monitored metric, the
sweeper's objective. So any installed sweeper (Optuna, Nevergrad, Ax) and launcher (joblib,
submitit, Ray) runs paxtrain's jobs with no code of paxtrain's for it.

The runs land where paxtrain's grid sweeps put them (`runs/NAME-multirun-TIME/N_KEY=VALUE`,
or under the config's `run_dir`), each with the usual files; Hydra works in the directory it
was started from (`hydra.job.chdir=False`), keeps its `multirun.yaml` (and the Optuna plugin's
`optimization_results.yaml`) in the sweep directory, and writes no `.hydra/` or log file into
the runs.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pathlib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paxtrain.errors import ConfigError

PLUGIN_GROUPS = {"hydra/sweeper": "sweeper", "hydra/launcher": "launcher"}


# Hydra's plugins by option name, and the package that brings each; those of the `sweep` extra
# are the ones paxtrain is tested with.
PLUGIN_PACKAGES = {
    "hydra/sweeper": {
        "optuna": "hydra-optuna-sweeper",
        "nevergrad": "hydra-nevergrad-sweeper",
        "ax": "hydra-ax-sweeper",
    },
    "hydra/launcher": {
        "joblib": "hydra-joblib-launcher",
        "submitit_local": "hydra-submitit-launcher",
        "submitit_slurm": "hydra-submitit-launcher",
        "ray": "hydra-ray-launcher",
        "rq": "hydra-rq-launcher",
    },
}


SWEEP_EXTRA = ("hydra-optuna-sweeper", "hydra-joblib-launcher", "hydra-submitit-launcher")


NOT_INSTALLED_MSG = (
    "`{override}` needs Hydra's {kind} plugin {package}, which is not installed: {install}."
)


UNKNOWN_PLUGIN_MSG = (
    "`{override}`: Hydra has no {kind} {name!r}. Installed: {installed}; others to install: "
    "{others}."
)


TWO_LAUNCHERS_MSG = (
    "--launcher {launcher} and `{override}` are two launchers: use `--launcher` for paxtrain's "
    "grid (one Slurm job array), or Hydra's launcher plugin, not both."
)


DIRECTION_MSG = (
    "The sweeper's direction is {direction}, but the sweep's objective `{metric}` is better "
    "when {mode} (the config's monitor): set `hydra.sweeper.direction={wanted}`."
)


PAXTRAIN_SETS_MSG = (
    "`{override}`: paxtrain sets Hydra's {key} so that a sweep's runs land where paxtrain's runs "
    "land, each with its usual files: leave it out (`run_dir=DIR` chooses the sweep directory)."
)


HYDRA_CONFIG_MSG = "Hydra's part of the sweep cannot be composed: {message}"


UNKNOWN_HYDRA_KEY_MSG = "`{key}` is not a setting of `{parent}`.{hint} Its settings: {keys}."


def uses_hydra(overrides: Sequence[str]) -> bool:
    """Whether a sweep's overrides name Hydra's own config (`hydra/sweeper=...`,
    `hydra/launcher=...`, `hydra.sweeper.n_trials=...`): then Hydra runs it.

    Example:
        >>> uses_hydra(["seed=1,2"]), uses_hydra(["hydra/launcher=joblib", "seed=1,2"])
        (False, True)
    """
    return any(_is_hydra(o) for o in overrides)


def _is_hydra(override: str) -> bool:
    key = override.lstrip("+~").partition("=")[0]
    return key == "hydra" or key.startswith(("hydra/", "hydra."))


def check_plugins(overrides: Sequence[str]) -> None:
    """Raises ConfigError for a sweeper or launcher that is not installed (naming the package
    and the extra that brings it) or that Hydra does not know (listing those it has).

    Example:
        >>> check_plugins(["hydra/launcher=basic"])
        >>> check_plugins(["hydra/sweeper=optima"])
        Traceback (most recent call last):
        ...
        paxtrain.errors.ConfigError: `hydra/sweeper=optima`: Hydra has no sweeper 'optima'. ...
    """
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the installed plugins, which register their configs
    store = ConfigStore.instance()
    for override in overrides:
        group, _, name = override.lstrip("+").partition("=")
        if group not in PLUGIN_GROUPS:
            continue
        installed = sorted(
            n.removesuffix(".yaml") for n in store.list(group) if n.endswith(".yaml")
        )
        if name in installed:
            continue
        kind, known = PLUGIN_GROUPS[group], PLUGIN_PACKAGES[group]
        package = known.get(name)
        if package:
            install = (
                'pip install -e ".[sweep]" (paxtrain\'s sweep extra)'
                if package in SWEEP_EXTRA
                else f"pip install {package}"
            )
            raise ConfigError(
                NOT_INSTALLED_MSG.format(
                    override=override, kind=kind, package=package, install=install
                )
            )
        others = sorted(set(known) - set(installed))
        raise ConfigError(
            UNKNOWN_PLUGIN_MSG.format(
                override=override, kind=kind, name=name, installed=", ".join(installed),
                others=", ".join(others),
            )
        )  # fmt: skip


class HydraSweepTask:
    """The task function of paxtrain's `@hydra.main` application: one job of the sweep.

    Validates the job's config (as `paxtrain fit` validates a composed one), fits it in the
    run directory Hydra gives the job, records its outcome and the sweep's table, and returns
    the final value of the objective. A job that fails (its config refused, its data unusable,
    no finite result) returns its one-line message instead of a number: Hydra's Optuna
    sweeper records such a trial as failed (the value is not float-castable) and the search
    goes on; the basic sweeper runs the other jobs. A preempted job stops the sweep (exit 75).

    A picklable object (not a closure): joblib and submitit send it to other processes.

    Example:
        >>> task = HydraSweepTask("configs/char_rnn.yaml", "min", os.getcwd(), [])
        >>> hydra.main(config_path="configs", config_name=PRIMARY_NAME)(task)()  # doctest: +SKIP
    """

    def __init__(
        self,
        config_path: str,
        mode: str,
        workdir: str,
        sys_path: list[str],
        sweep: str = "",
        restart: bool = False,
    ):
        self.config_path, self.mode, self.sweep = config_path, mode, sweep
        self.workdir, self.sys_path, self.restart = workdir, sys_path, restart

    def __call__(self, cfg: DictConfig) -> float | str:
        from hydra.core.hydra_config import HydraConfig

        from paxtrain.cli.sweep_results import (
            FAILED,
            PREEMPTED,
            enter_sweep_start,
            records_here,
            run_sweep_job,
            write_summary,
        )
        from paxtrain.config.schema import validate
        from paxtrain.train.preemption import PREEMPTED_EXIT_CODE

        enter_sweep_start(self.workdir, self.sys_path)
        hydra = HydraConfig.get()
        # Shown as the grid shows its runs: relative to where the sweep started, if inside.
        relative = os.path.relpath(hydra.runtime.output_dir)
        run_dir = hydra.runtime.output_dir if relative.startswith("..") else relative

        def config() -> DictConfig:
            job = cfg.copy()
            OmegaConf.set_struct(job, False)
            job.run_dir = run_dir
            return validate(job)

        overrides = [o.removeprefix("++") for o in hydra.overrides.task]
        outcome = run_sweep_job(
            hydra.job.num, overrides, run_dir, self.config_path, config, self.sweep, self.restart
        )
        if records_here():
            write_summary(hydra.sweep.dir, self.mode)  # current for launchers that do not wait
        if outcome.outcome == PREEMPTED:
            # Not a failed trial to search past: the whole sweep is being stopped. SystemExit
            # passes through Hydra's job runner (which catches Exceptions only).
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if outcome.outcome == FAILED or outcome.value is None:
            return f"paxtrain: {outcome.outcome}: {outcome.message or 'no final ' + outcome.metric}"
        return outcome.value


def hydra_settings(sweep_dir: pathlib.Path, fixed_keys: Sequence[str]) -> list[str]:
    """Hydra's overrides that put a sweep's runs where paxtrain's grid puts them: the sweep
    directory, one run directory `N_KEY=VALUE` per job (its swept values), Hydra in the
    starting directory, no `.hydra/` or job log in the runs.

    Example:
        >>> hydra_settings(pathlib.Path("runs/s"), ["trainer.max_steps"])[2]
        'hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}'
    """
    return [
        "hydra.job.chdir=False",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed_keys)}]",
        f"hydra.run.dir={sweep_dir}",
        "hydra.output_subdir=null",
        "hydra/job_logging=none",
        # Hydra's and its plugins' own lines (jobs launched, best trial), not every library's
        # INFO log that a root logger at INFO would print.
        "hydra.hydra_logging.root.level=WARNING",
        "++hydra.hydra_logging.loggers.hydra.level=INFO",
        "++hydra.hydra_logging.loggers.hydra_plugins.level=INFO",
    ]


def run_hydra_sweep(
    config_path: str,
    overrides: Sequence[str],
    sys_path: Sequence[str] = (),
    print_config: bool = False,
    restart: bool = False,
) -> int:
    """Runs `paxtrain fit CONFIG -m OVERRIDES` through Hydra's multirun; returns the sweep's
    exit code (`cli.sweep_results.report_sweep`), after printing its result table.

    The overrides are checked first (syntax, a key given twice, the plugins and their
    settings, the config's keys and types at the sweep's first point: each swept key at its
    first value or the start of its interval), so a typo ends the sweep before any job.
    `print_config`: print that first point's config (`--cfg job`) instead of running.
    `restart`: `--restart`, passed on to every job (`run_sweep_job`).

    Example:
        >>> run_hydra_sweep("configs/char_rnn.yaml", ["hydra/launcher=joblib", "seed=1,2"])  # doctest: +SKIP
        0
    """
    from paxtrain.cli.sweep import parse_sweep, sweep_dir
    from paxtrain.cli.sweep_results import new_sweep_id, objective, read_outcomes, report_sweep
    from paxtrain.config.composition import compose, explicit_overrides

    parsed = parse_sweep(overrides)
    hydra_side = [o for o in overrides if _is_hydra(o)]
    task = [(o, p) for o, p in zip(overrides, parsed) if not _is_hydra(o)]
    check_plugins(hydra_side)
    _check_not_paxtrains(hydra_side)
    # Keys and types (Hydra would stop the whole sweep on them, in its own words): at the
    # first point, and each listed value of a swept key. Values are each job's to check, so
    # that a trial with a bad one fails alone.
    first = [_first_point(o, p) for o, p in task]
    cfg = compose(config_path, first, check=False)
    for i, (_, override) in enumerate(task):
        for value in _listed_values(override):
            compose(config_path, [*first[:i], value, *first[i + 1 :]], check=False)
    monitor = objective(cfg)
    sweeper = _sweeper_config(config_path, hydra_side)
    _check_direction(sweeper, monitor)
    if print_config:
        swept = " ".join(o for o, p in task if p.is_sweep_override())
        print(f"# The sweep's first point; swept by Hydra: {swept}")
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    where = sweep_dir(cfg.run_dir, config_path)
    fixed_keys = [p.key_or_group for o, p in task if not p.is_sweep_override()]
    argv = [
        "paxtrain", "-m", *explicit_overrides(config_path, [o for o, _ in task]),
        *hydra_settings(where, fixed_keys), *hydra_side,
    ]  # fmt: skip
    app = HydraSweepTask(
        config_path, monitor.mode, os.getcwd(), list(sys_path), new_sweep_id(), restart
    )
    with _argv(argv):
        code = _run_hydra_app(app, config_path)
    if code and not read_outcomes(where):  # Hydra stopped before any job, and said why
        return code
    return max(code, report_sweep(where, monitor.mode))


def _check_not_paxtrains(overrides: Sequence[str]) -> None:
    """Refuses an override of where and how Hydra puts the runs (`hydra_settings`); its
    logging is the user's to change."""
    settings = hydra_settings(pathlib.Path("."), [])
    ours = {o.partition("=")[0] for o in settings if "logging" not in o}
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key in ours or key.startswith("hydra.job.config.override_dirname"):
            raise ConfigError(PAXTRAIN_SETS_MSG.format(override=override, key=key))


def _first_point(text: str, override: Any) -> str:
    """A swept override at its first value (the start of an interval); others as given."""
    from hydra.core.override_parser.types import ValueType

    if not override.is_sweep_override():
        return text
    if override.value_type == ValueType.INTERVAL_SWEEP:
        first = str(override.value().start)
    else:
        first = next(iter(override.sweep_string_iterator()))
    return f"{override.get_key_element()}={first}"


def _listed_values(override: Any) -> list[str]:
    """`key=value` for each value a choice or range sweep lists after its first; [] for
    other overrides (an interval has no list)."""
    from hydra.core.override_parser.types import ValueType

    listed = (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP)
    if override.value_type not in listed:
        return []
    key = override.get_key_element()
    return [f"{key}={value}" for value in list(override.sweep_string_iterator())[1:]]


def _run_hydra_app(task: HydraSweepTask, config_path: str) -> int:
    """Hydra's `@hydra.main` application on the config's folder; Hydra's own exit code (1 when
    it stopped on an error it printed, e.g. a sweeper whose every trial failed)."""
    import hydra

    from paxtrain.config.composition import PRIMARY_NAME

    folder = str(pathlib.Path(config_path).resolve().parent)
    main = hydra.main(config_path=folder, config_name=PRIMARY_NAME, version_base="1.3")(task)
    try:
        main()
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1
    return 0


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """`sys.argv` as Hydra's application reads its command line, for the duration."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _sweeper_config(config_path: str, overrides: list[str]) -> Any:
    """Hydra's `hydra.sweeper` section as the overrides make it (Hydra's Compose API composes
    the plugins' configs, though it never runs them); a key the plugins do not have is a
    ConfigError naming the closest one."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from paxtrain.config.composition import PRIMARY_NAME

    folder = str(pathlib.Path(config_path).resolve().parent)
    with initialize_config_dir(config_dir=folder, version_base="1.3"):
        try:
            cfg = compose(PRIMARY_NAME, overrides=overrides, return_hydra_config=True)
        except HydraException as error:
            unknown = re.match(r"Could not override '(hydra\.[^']+)'", str(error))
            if unknown is None:
                message = " ".join(str(error).split())
                raise ConfigError(HYDRA_CONFIG_MSG.format(message=message)) from None
            groups = [o for o in overrides if "/" in o.partition("=")[0]]
            plugins = compose(PRIMARY_NAME, overrides=groups, return_hydra_config=True)
            raise ConfigError(_unknown_key_message(unknown.group(1), plugins)) from None
    return cfg.hydra.sweeper


def _unknown_key_message(key: str, cfg: DictConfig) -> str:
    parent, _, _ = key.rpartition(".")
    section = OmegaConf.select(cfg, parent)
    keys = sorted(section.keys()) if isinstance(section, DictConfig) else []
    close = difflib.get_close_matches(key.rpartition(".")[2], keys, 1)
    hint = f" Did you mean `{parent}.{close[0]}`?" if close else ""
    return UNKNOWN_HYDRA_KEY_MSG.format(
        key=key, parent=parent, hint=hint, keys=", ".join(keys) or "none"
    )


def _check_direction(sweeper: Any, monitor: Any) -> None:
    """A sweeper with a `direction` (Optuna's) must go the monitored metric's way."""
    direction = OmegaConf.select(sweeper, "direction", default="") or ""
    direction = str(getattr(direction, "name", direction))  # Optuna's is an enum
    wanted = "minimize" if monitor.mode == "min" else "maximize"
    if direction.lower() in ("minimize", "maximize") and direction.lower() != wanted:
        raise ConfigError(
            DIRECTION_MSG.format(
                direction=direction, metric=monitor.key, mode=f"{monitor.mode}imal", wanted=wanted
            )
        )


def check_hydra_flags(overrides: Sequence[str], launcher: str | None) -> None:
    """Refuses `--launcher` (paxtrain's grid launcher) beside Hydra's plugins.

    Example:
        >>> check_hydra_flags(["hydra/launcher=joblib", "seed=1,2"], None)
    """
    if launcher:
        override = next(o for o in overrides if _is_hydra(o))
        raise ConfigError(TWO_LAUNCHERS_MSG.format(launcher=launcher, override=override))
