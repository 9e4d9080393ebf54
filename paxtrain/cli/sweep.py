"""Sweeps: `paxtrain fit CONFIG -m a=1,2 b=range(3)` is one run per point of the product.

The overrides are read by Hydra's public override parser (`OverridesParser`), so a sweep is
written as in any Hydra app: `a=1,2`, `a=choice(1,2)`, `a=range(0,10,2)`; the points are the
cartesian product of the swept keys, in the order the keys are given.
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from paxtrain.cli.runs import _timestamp
from paxtrain.errors import ConfigError

BAD_OVERRIDE_MSG = "Override {override!r} cannot be parsed: {reason}"


UNSWEEPABLE_MSG = (
    "`{override}` is a {kind} sweep, which cannot be listed as runs: give the values "
    "(`{key}=a,b`, `{key}=choice(a,b)`) or a range (`{key}=range(0,10,2)`), or search it with "
    'a sweeper plugin, e.g. `hydra/sweeper=optuna` (pip install -e ".[sweep]").'
)


KEY_TWICE_MSG = (
    "`{key}` is given twice in a sweep ({first!r} and {second!r}), which would run only the "
    "last: give its values once, e.g. `{key}={values}`."
)


def sweep_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Expands Hydra sweep overrides into one override list per run: the cartesian product of
    the swept keys (`a=1,2`, `choice(...)`, `range(...)`), the other overrides in each.

    A key given twice is refused (Hydra's basic sweeper would silently keep the last one).

    Example:
        >>> sweep_overrides(["seed=1,2", "trainer.max_steps=5"])
        [['seed=1', 'trainer.max_steps=5'], ['seed=2', 'trainer.max_steps=5']]
        >>> sweep_overrides(["a=range(0,3)", "b=choice(x,y)"])[-1]
        ['a=2', 'b=y']
    """
    from hydra.core.override_parser.types import ValueType

    listable = (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP)
    values: dict[str, list[str]] = {}
    for text, override in zip(overrides, parse_sweep(overrides)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [text]  # as given: `~key` stays `~key`
        elif override.value_type in listable:
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            kind = override.value_type.name.split("_")[0].lower()
            raise ConfigError(UNSWEEPABLE_MSG.format(override=text, kind=kind, key=key))
    return [list(job) for job in itertools.product(*values.values())]


def parse_sweep(overrides: Sequence[str]) -> list[Any]:
    """The overrides of a sweep parsed by Hydra's public parser (`Override` objects), each key
    given once; a ConfigError names an override that cannot be parsed, or a key given twice.

    Example:
        >>> [o.is_sweep_override() for o in parse_sweep(["seed=1,2", "trainer.max_steps=5"])]
        [True, False]
        >>> parse_sweep(["seed=1,2,3", "seed=5"])
        Traceback (most recent call last):
        ...
        paxtrain.errors.ConfigError: `seed` is given twice in a sweep ('seed=1,2,3' and 'seed=5'), which would run only the last: give its values once, e.g. `seed=1,2,3,5`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed: list[Any] = []
    seen: dict[str, Any] = {}
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as error:
            reason = " ".join(str(error).split())
            raise ConfigError(BAD_OVERRIDE_MSG.format(override=text, reason=reason)) from None
        key, first = override.key_or_group, seen.get(override.key_or_group)
        # Two plain values keep the last, as in one `paxtrain fit`; a sweep would lose values.
        if first is not None and (first.is_sweep_override() or override.is_sweep_override()):
            values = f"{first.input_line.partition('=')[2]},{text.partition('=')[2]}"
            raise ConfigError(
                KEY_TWICE_MSG.format(key=key, first=first.input_line, second=text, values=values)
            )
        seen[key] = override
        parsed.append(override)
    return parsed


def sweep_dir(run_dir: str | None, config_path: str) -> pathlib.Path:
    """The directory of a sweep's runs: the `run_dir` its config sets, else
    `runs/NAME-multirun-TIMESTAMP`, NAME the config file's stem.

    Example:
        >>> sweep_dir(None, "configs/char_rnn.yaml")
        PosixPath('runs/char_rnn-multirun-...-...')
        >>> sweep_dir("sweeps/a", "configs/char_rnn.yaml")
        PosixPath('sweeps/a')
    """
    if run_dir:
        return pathlib.Path(run_dir)
    return pathlib.Path("runs") / f"{pathlib.Path(config_path).stem}-multirun-{_timestamp()}"


def assign_sweep_dirs(
    configs: list[DictConfig], jobs: list[list[str]], config_path: str
) -> list[DictConfig]:
    """Gives each job of a sweep its own run directory under one sweep directory: the `run_dir`
    the config sets (or the command line), else `runs/NAME-multirun-TIMESTAMP`. A swept
    `run_dir` (`run_dir=a,b`) already gives each job its own.

    Example:
        >>> from omegaconf import OmegaConf
        >>> jobs = [["seed=1", "trainer.max_steps=5"], ["seed=2", "trainer.max_steps=5"]]
        >>> cfgs = [OmegaConf.create({"seed": s, "run_dir": None}) for s in (1, 2)]
        >>> assign_sweep_dirs(cfgs, jobs, "configs/char_rnn.yaml")[1].run_dir
        'runs/char_rnn-multirun-...-.../1_seed=2'
        >>> cfgs = [OmegaConf.create({"seed": s, "run_dir": "sweeps/a"}) for s in (1, 2)]
        >>> assign_sweep_dirs(cfgs, jobs, "configs/char_rnn.yaml")[1].run_dir
        'sweeps/a/1_seed=2'
    """
    given = {cfg.run_dir for cfg in configs}
    if len(given) > 1:
        return configs
    (run_dir,) = given or {None}
    base = sweep_dir(run_dir, config_path)
    shared = set.intersection(*(set(job) for job in jobs)) if jobs else set()
    out = []
    for i, (cfg, overrides) in enumerate(zip(configs, jobs)):
        cfg = cfg.copy()
        swept = ",".join(o for o in overrides if o not in shared and "/" not in o)[:80]
        cfg.run_dir = str(base / f"{i}_{swept}" if swept else base / str(i))
        out.append(cfg)
    return out


def run_grid(
    configs: list[DictConfig], jobs: list[list[str]], config_path: str, restart: bool = False
) -> int:
    """Runs a grid sweep's jobs one after another in this process, each to its outcome (a job
    that fails does not stop the others), prints the result table and returns the sweep's
    exit code (`cli.sweep_results.report_sweep`). A preemption signal stops the sweep: the
    jobs after it wait for the same command to run again.

    Args:
      configs: the jobs' validated configs, each with its run directory (`assign_sweep_dirs`).
      jobs: each job's overrides.
      config_path: the YAML file they were composed from.
      restart: `--restart`, passed on to every job (`run_sweep_job`).

    Example:
        >>> run_grid(configs, [["seed=1"], ["seed=2"]], "configs/char_rnn.yaml")  # doctest: +SKIP
        0
    """
    from paxtrain.cli.sweep_results import (
        PREEMPTED,
        new_sweep_id,
        objective,
        report_sweep,
        run_sweep_job,
    )

    sweep = new_sweep_id()
    for index, (cfg, overrides) in enumerate(zip(configs, jobs)):
        outcome = run_sweep_job(index, overrides, cfg.run_dir, config_path, cfg, sweep, restart)
        if outcome.outcome == PREEMPTED:
            break
    where = pathlib.Path(configs[0].run_dir).parent if configs else pathlib.Path(".")
    return report_sweep(where, objective(configs[0]).mode if configs else "min")
