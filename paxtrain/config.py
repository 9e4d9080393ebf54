"""Run configuration: structured schemas, composition with Hydra, validation with clear errors.

A run config is a YAML file (plus Hydra overrides) checked against `FitConfig`. The `model`,
`data` and `callbacks` sections name Python objects with `_target_`; their keys are checked
against the target's signature before anything is built.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import difflib
import enum
import importlib
import inspect
import pathlib
import re
import types
import typing
from typing import Any

import jax
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A config problem, reported to the user as one message (exit code 2 on the CLI)."""


class Mode(enum.StrEnum):
    """Whether a smaller or a larger monitored metric is better."""

    min = "min"
    max = "max"


class Progress(enum.StrEnum):
    """How training progress is shown: a bar on a terminal, log lines otherwise (auto)."""

    auto = "auto"
    bar = "bar"
    log = "log"
    off = "off"


class NonFinite(enum.StrEnum):
    """What a step with a non-finite loss or gradient does (see `Trainer`)."""

    skip = "skip"
    stop = "stop"
    rollback = "rollback"
    none = "none"


class Strategy(enum.StrEnum):
    """How steps run on several devices: jit over a mesh, or pmap (data parallel only)."""

    jit = "jit"
    pmap = "pmap"


# The schemas mirror the objects they configure (`MIRRORS`), with the same defaults and types
# (tests/test_config_schema.py fails when they drift, and lists the deliberate differences).


@dataclasses.dataclass
class EarlyStoppingConfig:
    """`paxtrain.train.hooks.EarlyStopping`'s parameters.

    Attributes:
      monitor: eval metric, e.g. "eval/loss"; null: no early stopping.
    """

    monitor: str | None = None
    mode: Mode = Mode.min
    patience: int = 3
    min_delta: float = 0.0


@dataclasses.dataclass
class CheckpointConfig:
    """`paxtrain.train.checkpointing.Checkpointing`'s parameters.

    Attributes:
      enabled: false: no checkpoints (and no resume).
    """

    every_steps: int | None = 500
    every_seconds: float | None = None
    keep_last: int = 3
    keep_best: int = 0
    monitor: str | None = None
    mode: Mode = Mode.min
    async_save: bool = True
    enabled: bool = True


@dataclasses.dataclass
class ProfileConfig:
    """`paxtrain.train.profile.Profile`'s parameters.

    Attributes:
      start_step: trace `num_steps` steps from this one into RUN_DIR/profile/; null: no trace.
    """

    start_step: int | None = None
    num_steps: int = 3


@dataclasses.dataclass
class TrainerConfig:
    """`paxtrain.train.trainer.Trainer`'s parameters (its docstring has their help).

    Attributes:
      loggers: tensorboard, jsonl, mlflow, wandb, or `_target_` sections building Loggers.
    """

    max_steps: int = 1000
    eval_every: int | None = None
    log_every: int = 50
    steps_per_call: int = 1
    grad_accum_steps: int = 1
    precision: str = "float32"
    ema_decay: float | None = None
    on_nonfinite: NonFinite = NonFinite.skip
    rollback_lr_factor: float = 0.5
    grad_norm: bool = True
    progress: Progress = Progress.auto
    plot: bool = True
    loggers: list[Any] = dataclasses.field(default_factory=lambda: ["tensorboard", "jsonl"])
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    profile: ProfileConfig = dataclasses.field(default_factory=ProfileConfig)
    compile_cache: str | None = "auto"
    preemption_signals: list[str] = dataclasses.field(
        default_factory=lambda: ["SIGTERM", "SIGINT", "SIGUSR1"]
    )


@dataclasses.dataclass
class MeshConfig:
    """Device layout (`paxtrain.parallel.make_mesh`); -1 takes the devices the others leave.

    Attributes:
      data: devices on the data-parallel axis.
      fsdp: devices the batch and the large parameters are split over (FSDP).
      tensor: devices the parameters are split over by the tensor-parallel rules.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass
class ParallelConfig:
    """How the steps run on several devices and processes.

    Attributes:
      strategy: jit (a mesh: data, FSDP, tensor parallel) or pmap (data parallel only).
      distributed: join a multi-process run when the environment describes one (Slurm...).
      tensor_rules: [[regex, [entry per axis]], ...] (`paxtrain.parallel.as_rules`); null: defaults.
    """

    strategy: Strategy = Strategy.jit
    distributed: bool = True
    tensor_rules: list[Any] | None = None


@dataclasses.dataclass
class FitConfig:
    """A `paxtrain fit` run (`paxtrain options CONFIG` lists every key with its help).

    Attributes:
      name: the run's name, the start of its default run directory.
      run_dir: the run directory; null: runs/<name>-<timestamp>.
      seed: seed of the model's initialization and of the training RNG.
      optimizer: a `_target_` section over optax (`paxtrain.optax_config`).
      model: a `_target_` section building the model; it may take `data.info` values.
      data: a `_target_` section building the `DataSource`.
      callbacks: `_target_` sections building more hooks.
      init_from: fine-tuning: a run directory or checkpoint to load parameters from.
      init_from_include: regexes on parameter paths: load only those that match.
      freeze: regexes on submodule paths: those are not trained.
    """

    name: str = "run"
    run_dir: str | None = None
    seed: int = 0
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    optimizer: Any = None
    model: Any = None
    data: Any = None
    callbacks: list[Any] = dataclasses.field(default_factory=list)
    init_from: str | None = None
    init_from_include: list[str] = dataclasses.field(default_factory=list)
    freeze: list[str] = dataclasses.field(default_factory=list)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)


# The object each schema configures: its docstring's `Args:` are the keys' help (`paxtrain
# options`); tests/test_config_schema.py checks the defaults and types agree.
MIRRORS = {
    TrainerConfig: "paxtrain.train.trainer.Trainer",
    CheckpointConfig: "paxtrain.train.checkpointing.Checkpointing",
    EarlyStoppingConfig: "paxtrain.train.hooks.EarlyStopping",
    ProfileConfig: "paxtrain.train.profile.Profile",
}


UNKNOWN_KEY_MSG = "Unknown config key `{key}`.{hint}"
WRONG_TYPE_MSG = "Config key `{key}`: {detail}"
MISSING_VALUE_MSG = "Config key `{key}` is required but has no value: set it with `{key}=...`."
BAD_CHOICE_MSG = "Config key `{key}` is {value!r}; choose one of {choices}."
NO_TARGET_MSG = "Config section `{key}` needs a `_target_` naming the class or function to build."
BAD_TARGET_MSG = "`{key}._target_`: cannot import {target!r} ({reason})."
UNKNOWN_ARG_MSG = "`{key}.{arg}` is not a parameter of {target}.{hint}"
MISSING_ARG_MSG = "`{key}` is missing required parameter(s) {args} of {target}."
AT_LEAST_ONE_MSG = "Config key `{key}` is {value}; it must be at least 1, e.g. `{key}={example}`."
NOT_FINITE_MSG = (
    "Config key `{key}` is {value}; it must be a finite number, e.g. `{key}={example}`."
)
KEEP_BEST_MSG = (
    "`trainer.checkpoint.keep_best={keep_best}` needs the metric that ranks checkpoints: add "
    "`trainer.checkpoint.monitor=eval/loss` (or another eval metric), or set keep_best=0."
)
ARG_TYPE_MSG = (
    "`{key}.{arg}` is {value!r}, but {target} takes {expected} there, e.g. `{key}.{arg}={example}`."
)
ARG_SIZE_MSG = (
    "`{key}.{arg}` is {value}; a size or count must be at least 1, e.g. `{key}.{arg}={example}`."
)
NOT_YAML_MSG = (
    "The config {path} is not a YAML file (.yaml): give one, e.g. `paxtrain fit {example}`."
)
CONFIG_IS_DIR_MSG = (
    "The config path {path} is a directory: give a YAML file, e.g. `paxtrain fit {example}`."
)
BAD_YAML_MSG = "{path} is not valid YAML: {problem} (line {line}, column {column})."
GROUP_OPTION_MSG = "{message} Available options in '{group}': {options}."

# Keys that count something and must be at least 1 (None, where allowed, means "not used").
_AT_LEAST_ONE = (
    "trainer.max_steps", "trainer.log_every", "trainer.eval_every", "trainer.steps_per_call",
    "trainer.grad_accum_steps", "trainer.checkpoint.every_steps", "trainer.checkpoint.keep_last",
    "trainer.early_stopping.patience", "optimizer.horizon", "trainer.profile.num_steps",
)  # fmt: skip

# Keys that are fractions: (lower bound, upper bound, the interval in words, an example).
_INTERVALS = {
    "trainer.ema_decay": (lambda v: v >= 0, lambda v: v < 1, "[0, 1)", 0.999),
    "trainer.rollback_lr_factor": (lambda v: v > 0, lambda v: v <= 1, "(0, 1]", 0.5),
}
PROFILE_START_MSG = (
    "`trainer.profile.start_step` is {start}, outside the run's steps 0 to {last}: no trace "
    "would be written; choose a step in that range, e.g. `trainer.profile.start_step=10`."
)
INTERVAL_MSG = "Config key `{key}` is {value}; it must be in {interval}, e.g. `{key}={example}`."

# Parameters of `_target_`s that are sizes or counts by their name: `batch_size`, `seq_len`,
# `hidden_dim`, `num_layers`... An int given to one must be at least 1.
_SIZE_PARAMETER = re.compile(r"(^|_)(size|len|dim|ratio|batches)$|^num_")


def _hint(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    return (
        f" Did you mean {', '.join(f'`{c}`' for c in close)}?"
        if close
        else (f" Valid keys here: {', '.join(sorted(candidates))}." if candidates else "")
    )


def _keys_at(node: Any, prefix: str) -> list[str]:
    if not isinstance(node, (DictConfig, dict)):
        return []
    return [f"{prefix}{k}" for k in node]


def _sibling_keys(full_key: str, *configs: Any) -> list[str]:
    """Full keys beside `full_key` in the schema and in `configs`, with the parameters of the
    target of a `_target_` section there."""
    parent = full_key.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    keys: set[str] = set()
    for node in (OmegaConf.structured(FitConfig), *configs):
        for part in filter(None, parent.split(".")):
            node = node.get(part) if isinstance(node, (DictConfig, dict)) else None
        keys.update(_keys_at(node, prefix))
        if _is_target(node):
            with contextlib.suppress(ConfigError, TypeError, ValueError):
                target = locate(str(node["_target_"]), parent)
                keys.update(f"{prefix}{name}" for name in inspect.signature(target).parameters)
    return sorted(keys)


def validate(cfg: DictConfig) -> DictConfig:
    """Checks `cfg` against `FitConfig`; returns the merged, typed config.

    Raises ConfigError naming the key, with the closest valid names for an unknown key.

    Example:
        >>> cfg = OmegaConf.create({
        ...     "data": {"_target_": "paxtrain.data.CharCorpus", "seq_len": 16},
        ...     "model": {"_target_": "paxtrain.recipes.char_rnn.CharRNN", "hidden_dim": 32},
        ...     "trainer": {"max_steps": 10},
        ... })
        >>> validate(cfg).trainer.log_every  # the schema's default
        50
        >>> validate(OmegaConf.merge(cfg, {"trainer": {"max_step": 10}}))
        Traceback (most recent call last):
        paxtrain.config.ConfigError: Unknown config key `trainer.max_step`. Did you mean `trainer.max_steps`...?
    """
    schema = OmegaConf.structured(FitConfig)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except (ConfigKeyError, ValidationError) as error:
        detail = str(error).splitlines()[0]
        value = getattr(error, "value", None)
        raise _schema_error(type(error).__name__, str(error.full_key), detail, value) from None
    from paxtrain.optax_config import complete_optimizer, validate_optimizer

    complete_optimizer(merged)
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(MISSING_VALUE_MSG.format(key=missing[0]))
    _check_numbers(merged)
    _check_precision(merged.trainer.precision)
    _check_loggers(merged.trainer.loggers)
    validate_optimizer(merged)
    if merged.trainer.max_steps % merged.trainer.steps_per_call:
        raise ConfigError(
            f"`trainer.max_steps` ({merged.trainer.max_steps}) must be a multiple of "
            f"`trainer.steps_per_call` ({merged.trainer.steps_per_call})."
        )
    start, max_steps = merged.trainer.profile.start_step, merged.trainer.max_steps
    if start is not None and not 0 <= start < max_steps:
        raise ConfigError(PROFILE_START_MSG.format(start=start, last=max_steps - 1))
    check_target(merged.data, "data")
    check_target(merged.model, "model", provided=None)  # some arguments come from the data
    for i, callback in enumerate(merged.callbacks):
        check_target(callback, f"callbacks[{i}]")
    return merged


def _check_loggers(loggers: list[Any]) -> None:
    from paxtrain.train.logger import check_logger_name

    for i, logger in enumerate(loggers):
        if isinstance(logger, str):
            try:
                check_logger_name(logger)
            except ValueError as error:
                raise ConfigError(f"`trainer.loggers[{i}]`: {error}") from None
        else:
            check_target(logger, f"trainer.loggers[{i}]")


def _check_precision(precision: str) -> None:
    from paxtrain.train.precision import parse_precision

    try:
        parse_precision(precision)
    except ValueError as error:
        raise ConfigError(f"`trainer.precision`: {error}") from None


def _check_numbers(cfg: DictConfig) -> None:
    """Counts at least 1 and a monitor for keep_best (the optimizer's numbers: `optax_config`)."""
    defaults = OmegaConf.structured(FitConfig)
    for key in _AT_LEAST_ONE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            example = OmegaConf.select(defaults, key) or 10
            raise ConfigError(AT_LEAST_ONE_MSG.format(key=key, value=value, example=example))
    for key, (low, high, interval, example) in _INTERVALS.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not (low(value) and high(value)):
            raise ConfigError(
                INTERVAL_MSG.format(key=key, value=value, interval=interval, example=example)
            )
    keep_best = cfg.trainer.checkpoint.keep_best
    if keep_best and not cfg.trainer.checkpoint.monitor:
        raise ConfigError(KEEP_BEST_MSG.format(keep_best=keep_best))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value can be passed where `hint` is annotated; annotations other than
    plain scalars, their unions and sequences are not checked."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return _is_target(value)  # a config gives a function only as a `_target_` section
    if hint in _ARRAY_TYPES:
        return isinstance(value, (int, float, list, ListConfig)) and not isinstance(value, bool)
    return True


# Where an annotation takes arrays (`jax.Array`, numpy's, optax's `ArrayLike`), a config gives a
# number or a list of them.
_ARRAY_TYPES = (jax.Array, np.ndarray, np.number, np.bool_, complex)


def _type_name(hint: Any) -> str:
    """What a config may give where `hint` is annotated, in words: `int`, `int | None`, or for
    array-like and callable unions (optax's) `a number | a _target_ section`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        numbers = (int, float, *_ARRAY_TYPES) if set(args) & set(_ARRAY_TYPES) else ()
        names = dict.fromkeys("a number" if a in numbers else _type_name(a) for a in args)
        return " | ".join(names)
    if hint in _ARRAY_TYPES:
        return "a number"
    if typing.get_origin(hint) is collections.abc.Callable or hint is collections.abc.Callable:
        return "a _target_ section"
    if hint is type(None):
        return "None"
    return re.sub(
        r"\b(typing|collections\.abc)\.", "", getattr(hint, "__name__", None) or str(hint)
    )


def _parameter_hints(target: Any) -> dict[str, Any]:
    """Each parameter's annotation, evaluated on its own: one naming what its module imports only
    for type checkers (optax's `ArrayTree`) leaves only that parameter unchecked, where
    `typing.get_type_hints` would give up on all of them."""
    function = target.__init__ if inspect.isclass(target) else target
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    hints = {}
    for name, parameter in inspect.signature(function).parameters.items():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # what get_type_hints does, one by one
            except Exception:
                continue
        if annotation is not parameter.empty:
            hints[name] = annotation
    return hints


def _check_values(node: Any, key: str, target: Any) -> None:
    """Checks a `_target_` section's values against the target's annotations, and that sizes
    and counts (by parameter name) are at least 1, before the target is called."""
    try:
        values = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        )
    except Exception:  # unresolvable interpolations: the call itself reports
        return
    hints = _parameter_hints(target)
    params = inspect.signature(target).parameters
    for arg, value in values.items():
        hint = hints.get(arg)
        if arg.startswith("_") or hint is None or _is_target(value):
            continue
        default = params[arg].default if arg in params else inspect.Parameter.empty
        example = default if default not in (inspect.Parameter.empty, None) else "..."
        if not _fits(value, hint):
            raise ConfigError(
                ARG_TYPE_MSG.format(
                    key=key, arg=arg, value=value, target=node["_target_"],
                    expected=_type_name(hint), example=example,
                )
            )  # fmt: skip
        if _SIZE_PARAMETER.search(arg) and isinstance(value, int) and value < 1:
            raise ConfigError(ARG_SIZE_MSG.format(key=key, arg=arg, value=value, example=example))


def locate(target: str, key: str) -> Any:
    """Imports `package.module.name` (the current directory is importable, for user code).

    Example:
        >>> locate("paxtrain.data.CharCorpus", "data").__name__
        'CharCorpus'
    """
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(BAD_TARGET_MSG.format(key=key, target=target, reason=error)) from None


def check_target(node: Any, key: str, provided: tuple[str, ...] | None = ()) -> None:
    """Checks that a `_target_` section's keys match the target's parameters.

    `provided` names parameters the caller will pass itself (e.g. `vocab_size` from the data);
    None skips the check for missing required parameters, when those are not known yet, as
    does `_partial_: true` (the rest is passed later). Nested `_target_` sections, which
    `hydra.utils.instantiate` builds first, are checked the same way.

    Example:
        >>> check_target({"_target_": "paxtrain.data.CharCorpus", "seq_len": 8}, "data")
        >>> check_target({"_target_": "optax.chain", "_args_": [{"_target_": "optax.sgd"}]}, "opt")
        Traceback (most recent call last):
        paxtrain.config.ConfigError: `opt._args_[0]` is missing required parameter(s) ['learning_rate'] of optax.sgd.
    """
    if node is None:
        raise ConfigError(NO_TARGET_MSG.format(key=key))
    if not isinstance(node, (DictConfig, dict)) or "_target_" not in node:
        raise ConfigError(NO_TARGET_MSG.format(key=key))
    target = locate(str(node["_target_"]), key)
    signature = inspect.signature(target)
    params = signature.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    given = [k for k in node if not str(k).startswith("_")]
    if not takes_kwargs:
        for arg in given:
            if arg not in params:
                raise ConfigError(
                    UNKNOWN_ARG_MSG.format(
                        key=key, arg=arg, target=node["_target_"], hint=_hint(arg, names)
                    )
                )
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and n not in given
        and n not in (provided or ())
    ]
    if required and provided is not None and not node.get("_partial_", False):
        raise ConfigError(MISSING_ARG_MSG.format(key=key, args=required, target=node["_target_"]))
    _check_values(node, key, target)
    for arg, value in node.items():
        if _is_target(value):
            check_target(value, f"{key}.{arg}")
        elif isinstance(value, (ListConfig, list)):
            for i, item in enumerate(value):
                if _is_target(item):
                    check_target(item, f"{key}.{arg}[{i}]")


def _is_target(node: Any) -> bool:
    return isinstance(node, (DictConfig, dict)) and "_target_" in node


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
        if leaf in inspect.signature(locate(str(section._target_), parent)).parameters:
            return f"++{override}"
    return override


# A YAML file's value refused by the schema, as Hydra reports it (the cause is not kept).
_FILE_REFUSED = re.compile(r"(\w+Error) raised while composing config:\n(.*)\n\s+full_key: (\S+)")
_INVALID_VALUE = re.compile(r"Invalid value '(.*)', expected one of")
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


def _schema_error(
    kind: str, key: str, detail: str, value: Any = None, config: Any = None
) -> ConfigError:
    """A value or key the schema refuses, as one message naming the key: the closest valid
    keys (of the schema and of `config`) for an unknown one, the choices of an `Enum` field,
    else the type expected."""
    if kind in ("ConfigKeyError", "ConfigAttributeError"):
        hint = _hint(key, _sibling_keys(key, *([] if config is None else [config])))
        return ConfigError(UNKNOWN_KEY_MSG.format(key=key, hint=hint))
    field = _schema_type(key)
    if isinstance(field, type) and issubclass(field, enum.Enum):
        if value is None and (given := _INVALID_VALUE.search(detail)):
            value = given.group(1)
        choices = tuple(member.value for member in field)
        return ConfigError(BAD_CHOICE_MSG.format(key=key, value=value, choices=choices))
    return ConfigError(WRONG_TYPE_MSG.format(key=key, detail=detail))


def _schema_type(key: str) -> Any:
    """The annotation of a schema key (`trainer.progress` -> `Progress`), or None."""
    hint: Any = FitConfig
    for part in key.split("."):
        hint = typing.get_type_hints(hint).get(part) if dataclasses.is_dataclass(hint) else None
    return hint


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
        >>> from paxtrain.packaged_configs import find_config
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
            if overrides:
                base = hydra_compose(config_name=PRIMARY_NAME)
                overrides = [_add_target_parameter(o, base) for o in overrides]
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
