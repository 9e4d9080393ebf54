"""Sweeps: `paxtrain fit CONFIG -m a=1,2 b=range(3)` is one run per point of the product.

The overrides are read by Hydra's public override parser (`OverridesParser`), so a sweep is
written as in any Hydra app: `a=1,2`, `a=choice(1,2)`, `a=range(0,10,2)`; the points are the
cartesian product of the swept keys, in the order the keys are given.
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Sequence

from omegaconf import DictConfig

from paxtrain.cli.runs import _timestamp
from paxtrain.errors import ConfigError

BAD_OVERRIDE_MSG = "Override {override!r} cannot be parsed: {reason}"


UNSWEEPABLE_MSG = (
    "`{override}` is a {kind} sweep, which cannot be listed as runs: give the values "
    "(`{key}=a,b`, `{key}=choice(a,b)`) or a range (`{key}=range(0,10,2)`)."
)


def sweep_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Expands Hydra sweep overrides into one override list per run: the cartesian product of
    the swept keys (`a=1,2`, `choice(...)`, `range(...)`), the other overrides in each.

    A key given twice keeps its last value, as Hydra's basic sweeper does.

    Example:
        >>> sweep_overrides(["seed=1,2", "trainer.max_steps=5"])
        [['seed=1', 'trainer.max_steps=5'], ['seed=2', 'trainer.max_steps=5']]
        >>> sweep_overrides(["a=range(0,3)", "b=choice(x,y)"])[-1]
        ['a=2', 'b=y']
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    listable = (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP)
    parser = OverridesParser.create()
    values: dict[str, list[str]] = {}
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as error:
            reason = " ".join(str(error).split())
            raise ConfigError(BAD_OVERRIDE_MSG.format(override=text, reason=reason)) from None
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [text]  # as given: `~key` stays `~key`
        elif override.value_type in listable:
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            kind = override.value_type.name.split("_")[0].lower()
            raise ConfigError(UNSWEEPABLE_MSG.format(override=text, kind=kind, key=key))
    return [list(job) for job in itertools.product(*values.values())]


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
    base = (
        pathlib.Path(run_dir)
        if run_dir
        else pathlib.Path("runs") / f"{pathlib.Path(config_path).stem}-multirun-{_timestamp()}"
    )
    shared = set.intersection(*(set(job) for job in jobs)) if jobs else set()
    out = []
    for i, (cfg, overrides) in enumerate(zip(configs, jobs)):
        cfg = cfg.copy()
        swept = ",".join(o for o in overrides if o not in shared and "/" not in o)[:80]
        cfg.run_dir = str(base / f"{i}_{swept}" if swept else base / str(i))
        out.append(cfg)
    return out
