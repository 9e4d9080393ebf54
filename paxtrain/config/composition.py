"""Composing a run config with Hydra's Compose API: the file, the overrides, the schema, and
Hydra's errors turned into one message naming the key."""

from __future__ import annotations

import contextlib
import inspect
import pathlib
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from paxtrain.config.schema import FitConfig, _schema_error, validate
from paxtrain.config.targets import _is_target, locate
from paxtrain.errors import ConfigError

NOT_YAML_MSG = (
    "The config {path} is not a YAML file (.yaml): give one, e.g. `paxtrain fit {example}`."
)


CONFIG_IS_DIR_MSG = (
    "The config path {path} is a directory: give a YAML file, e.g. `paxtrain fit {example}`."
)


BAD_YAML_MSG = "{path} is not valid YAML: {problem} (line {line}, column {column})."


GROUP_OPTION_MSG = "{message} Available options in '{group}': {options}."


def _add_target_parameter(override: str, base: DictConfig) -> str:
    """`section.arg=value` for a parameter of a `_target_` section's target that the YAML file
    leaves out (`data.max_chars=5000`), as Hydra's `++section.arg=value`.

    The schema types `model`, `data`... as any value, so Hydra cannot know their keys; the
    target's signature does. Other keys are left to Hydra, and a typo in a target's parameter
    stays an error naming the closest parameter.

    Example:
        >>> base = OmegaConf.create({"data": {"_target_": "paxtrain.data.CharCorpus"}})
        >>> _add_target_parameter("data.seq_len=8", base), _add_target_parameter("data.sq=8", base)
        ('++data.seq_len=8', 'data.sq=8')
    """
    key, sep, _ = override.partition("=")
    if not sep or key.startswith(("+", "~")) or OmegaConf.select(base, key) is not None:
        return override
    parent, _, leaf = key.rpartition(".")
    section = OmegaConf.select(base, parent) if parent else None
    if not _is_target(section):
        return override
    # A bad target is reported by validation, with the right message.
    with contextlib.suppress(ConfigError, TypeError, ValueError):
        parameters = inspect.signature(locate(str(section._target_), parent)).parameters
        # A target with **kwargs (a subclass passing them on) takes any key; it checks them.
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        if leaf in parameters or takes_any:
            return f"++{override}"
    return override


def _chooses_target(override: str) -> bool:
    """Whether an override picks what a section builds: its `_target_`, or a config group
    option (a top-level key such as `model=gru`).

    Example:
        >>> [_chooses_target(o) for o in ["data._target_=x.Y", "model=gru", "data.path=a"]]
        [True, True, False]
    """
    key, sep, _ = override.lstrip("+~").partition("=")
    return bool(sep) and ("." not in key or key.endswith("._target_"))


# A YAML file's value refused by the schema, as Hydra reports it (the cause is not kept).
_FILE_REFUSED = re.compile(r"(\w+Error) raised while composing config:\n(.*)\n\s+full_key: (\S+)")


_GROUP_OPTIONS = re.compile(r"Available options in '([^']+)':\n((?:\t.*\n?)+)")


def _one_line(hydra_message: str) -> str:
    """Hydra's first line, plus its list of a config group's options when it has one."""
    first = hydra_message.splitlines()[0]
    options = _GROUP_OPTIONS.search(hydra_message)
    if not options:
        return first
    names = ", ".join(line.strip() for line in options.group(2).splitlines() if line.strip())
    return GROUP_OPTION_MSG.format(
        message=first.rstrip(".") + ".", group=options.group(1), options=names
    )


# Hydra's "schema in the defaults list": `FitConfig` is stored in Hydra's ConfigStore, and the
# primary config `compose` stores lists it before the user's file, which needs no change.
SCHEMA_NAME = "paxtrain_fit_schema"


PRIMARY_NAME = "paxtrain_compose"


def store_schema(config_name: str) -> None:
    """Stores `FitConfig` in Hydra's ConfigStore as `paxtrain_fit_schema`, and the primary
    config `paxtrain_compose`: defaults `[paxtrain_fit_schema, config_name, _self_]`. The file
    `config_name` merges onto the typed schema, so its values are checked as it loads, and an
    override can set a schema key it leaves out (`trainer.ema_decay=0.99`).

    Example:
        >>> store_schema("char_rnn")
        >>> from hydra.core.config_store import ConfigStore
        >>> ConfigStore.instance().load(f"{PRIMARY_NAME}.yaml").node.defaults
        ['paxtrain_fit_schema', 'char_rnn', '_self_']
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=FitConfig)
    store.store(name=PRIMARY_NAME, node={"defaults": [SCHEMA_NAME, config_name, "_self_"]})


def _hydra_error(error: Exception, config: Any) -> ConfigError:
    """Hydra's composition error as one `ConfigError`; `config` is the user's file, whose keys
    are candidates for a misspelt one."""
    cause, message = error.__cause__, str(error)
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:  # from an override
        first, value = str(cause).splitlines()[0], getattr(cause, "value", None)
        return _schema_error(type(cause).__name__, cause.full_key, first, value, config)
    refused = _FILE_REFUSED.search(message)  # from the file
    if refused:
        return _schema_error(refused.group(1), refused.group(3), refused.group(2))
    return ConfigError(_one_line(message))


def _with_target_parameters(overrides: list[str], chosen_from: list[str]) -> list[str]:
    """`_add_target_parameter` of each override, against the targets as the overrides in
    `chosen_from` set them (`data._target_=...`, `model=gru`): a target switched on the command
    line is asked about its own parameters. Inside Hydra's initialized config directory."""
    from hydra import compose as hydra_compose

    if not overrides:
        return overrides
    chosen = [o for o in chosen_from if _chooses_target(o)]
    base = hydra_compose(config_name=PRIMARY_NAME, overrides=chosen)
    return [_add_target_parameter(o, base) for o in overrides]


def explicit_overrides(config_path: str | pathlib.Path, overrides: list[str]) -> list[str]:
    """The overrides as Hydra's own multirun must be given them to compose what `compose`
    composes: a parameter of a `_target_` section's target that the file leaves out written
    `++section.arg=value`. Sweeps stay sweeps (`++data.max_chars=1000,2000`); the targets are
    taken from the overrides that are not sweeps.

    Example:
        >>> from paxtrain.config.packaged import find_config
        >>> explicit_overrides(find_config("char_rnn"), ["data.max_chars=1000,2000", "seed=1,2"])
        ['++data.max_chars=1000,2000', 'seed=1,2']
    """
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = pathlib.Path(config_path).expanduser().resolve()
    parsed = OverridesParser.create().parse_overrides(overrides)
    single = [o for o, p in zip(overrides, parsed) if not p.is_sweep_override()]
    store_schema(path.stem)
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
        return _with_target_parameters(overrides, single)


def compose(
    config_path: str | pathlib.Path, overrides: list[str], check: bool = True
) -> DictConfig:
    """Loads a YAML config with Hydra (config groups, defaults lists, overrides) onto the
    schema (`store_schema`) and validates it (`check=False`: typed by the schema only, values
    still to set (`???`) allowed, as `paxtrain options` lists them).

    `key=value` may set any schema key, and a parameter of a `_target_` section's target that
    the file leaves out (`data.max_chars=5000`, see `_add_target_parameter`); `+key=value` and
    `++key=value` work as in Hydra.

    Example:
        >>> from paxtrain.config.packaged import find_config
        >>> cfg = compose(find_config("char_rnn"), ["trainer.ema_decay=0.99", "data.max_chars=5000"])
        >>> cfg.trainer.ema_decay, cfg.data.max_chars, cfg.trainer.max_steps
        (0.99, 5000, 1500)
    """
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    path = pathlib.Path(config_path).expanduser().resolve()
    if path.is_dir():
        raise ConfigError(
            CONFIG_IS_DIR_MSG.format(path=config_path, example="configs/char_rnn.yaml")
        )
    if not path.is_file():
        raise ConfigError(f"Config file not found: {config_path}")
    if path.suffix not in (".yaml", ".yml"):  # Hydra would look for `STEM.yaml` beside it
        raise ConfigError(NOT_YAML_MSG.format(path=config_path, example="configs/char_rnn.yaml"))
    try:
        store_schema(path.stem)
        with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
            overrides = _with_target_parameters(overrides, overrides)
            cfg = hydra_compose(config_name=PRIMARY_NAME, overrides=overrides)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        raise ConfigError(
            BAD_YAML_MSG.format(
                path=config_path, problem=error.problem,
                line=mark.line + 1 if mark else "?", column=mark.column + 1 if mark else "?",
            )
        ) from None  # fmt: skip
    except HydraException as error:
        raise _hydra_error(error, OmegaConf.load(path)) from None
    OmegaConf.set_struct(cfg, False)
    return validate(cfg) if check else cfg
