"""The run configuration's schema: structured dataclasses mirroring the objects they
configure, and `validate`, which checks a config against them with one message per problem."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import inspect
import re
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from paxtrain.config.optimizer import complete_optimizer, validate_optimizer
from paxtrain.config.targets import _hint, _is_target, _keys_at, check_target, locate
from paxtrain.errors import ConfigError


class Mode(enum.StrEnum):
    """Whether a smaller or a larger monitored metric is better."""

    min = "min"
    max = "max"


class ProgressMode(enum.StrEnum):
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
      memory: also write a device memory profile after step `start_step` (needs start_step).
    """

    start_step: int | None = None
    num_steps: int = 3
    memory: bool = False


@dataclasses.dataclass
class TrainerConfig:
    """The parameters of `paxtrain.train.trainer.Trainer`, its `StepSettings` and its
    `default_hooks` (their docstrings have the help).

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
    progress: ProgressMode = ProgressMode.auto
    plot: bool = True
    loggers: list[Any] = dataclasses.field(default_factory=lambda: ["tensorboard", "jsonl"])
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    profile: ProfileConfig = dataclasses.field(default_factory=ProfileConfig)
    compile_cache: str | None = "auto"
    peak_tflops: float | None = None
    watchdog: float | None = None
    watchdog_min_seconds: float = 60.0
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
class LoRAConfig:
    """`finetune.lora`: low-rank adapters on the `Linear`s that `paths` selects
    (`paxtrain.nn.apply_lora`), trained on the frozen parameters `init_from` loads.

    Attributes:
      rank: the adapters' rank; null: no LoRA (setting it turns LoRA on).
    """

    rank: int | None = None
    alpha: float = 16.0
    dropout: float = 0.0
    paths: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FinetuneConfig:
    """`finetune`: how a run fine-tunes the parameters `init_from` loads.

    Attributes:
      lora: low-rank adapters instead of training the selected weights in full.
    """

    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)


@dataclasses.dataclass
class FitConfig:
    """A `paxtrain fit` run (`paxtrain options CONFIG` lists every key with its help).

    Attributes:
      name: the run's name, the start of its default run directory.
      run_dir: the run directory; null: runs/<name>-<timestamp>.
      seed: seed of the model's initialization and of the training RNG.
      optimizer: a `_target_` section over optax (`paxtrain.config.optimizer`).
      model: a `_target_` section building the model; it may take `data.info` values.
      data: a `_target_` section building the `DataSource`.
      callbacks: `_target_` sections building more hooks.
      init_from: fine-tuning: a run directory or checkpoint to load parameters from.
      init_from_include: regexes on parameter paths: load only those that match.
      freeze: regexes on submodule paths: those are not trained.
      finetune: fine-tuning methods: `finetune.lora` trains low-rank adapters only.
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
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)


# The objects each schema configures: their docstrings' `Args:` are the keys' help (`paxtrain
# options`); tests/test_config_schema.py checks the defaults and types agree. The `trainer`
# section sets the trainer's own parameters, its step settings and its built-in hooks.
MIRRORS = {
    TrainerConfig: (
        "paxtrain.train.trainer.Trainer",
        "paxtrain.train.builtin_hooks.default_hooks",  # before StepSettings: its `on_nonfinite`
        "paxtrain.train.settings.StepSettings",  # help says what a non-finite step does
    ),
    CheckpointConfig: ("paxtrain.train.checkpointing.Checkpointing",),
    EarlyStoppingConfig: ("paxtrain.train.hooks.EarlyStopping",),
    ProfileConfig: ("paxtrain.train.profile.Profile",),
    LoRAConfig: ("paxtrain.nn.lora.apply_lora",),
}


UNKNOWN_KEY_MSG = "Unknown config key `{key}`.{hint}"


WRONG_TYPE_MSG = "Config key `{key}`: {detail}"


MISSING_VALUE_MSG = "Config key `{key}` is required but has no value: set it with `{key}=...`."


BAD_CHOICE_MSG = "Config key `{key}` is {value!r}; choose one of {choices}."


AT_LEAST_ONE_MSG = "Config key `{key}` is {value}; it must be at least 1, e.g. `{key}={example}`."


LORA_WITHOUT_RANK_MSG = (
    "`finetune.lora.paths` is set but `finetune.lora.rank` is null, so no adapter would be "
    "trained: set the rank, e.g. `finetune.lora.rank=8`, or remove `finetune.lora.paths`."
)


LORA_WITHOUT_INIT_MSG = (
    "`finetune.lora.rank={rank}` trains adapters on frozen base weights, but `init_from` is "
    "null: the base would stay at its random initialization. Set `init_from=runs/NAME` (the "
    "run to fine-tune), or train the whole model without `finetune.lora`."
)


PROFILE_START_MSG = (
    "`trainer.profile.start_step` is {start}, outside the run's steps 0 to {last}: no trace "
    "would be written; choose a step in that range, e.g. `trainer.profile.start_step=10`."
)


PROFILE_MEMORY_MSG = (
    "`trainer.profile.memory=true` writes a memory profile after step `trainer.profile.start_step`, "
    "which is null: choose the step, e.g. `trainer.profile.start_step=10`."
)


BEST_WITHOUT_CHECKPOINTS_MSG = (
    "`trainer.checkpoint.{key}={value}` chooses the best checkpoints, but "
    "`trainer.checkpoint.enabled=false` saves none, so it would do nothing: turn checkpoints "
    "on (`trainer.checkpoint.enabled=true`), or leave {key} out "
    "(`trainer.checkpoint.{key}={unset}`)."
)


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
        paxtrain.errors.ConfigError: Unknown config key `trainer.max_step`. Did you mean `trainer.max_steps`...?
    """
    schema = OmegaConf.structured(FitConfig)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except (ConfigKeyError, ValidationError) as error:
        detail = str(error).splitlines()[0]
        value = getattr(error, "value", None)
        raise _schema_error(type(error).__name__, str(error.full_key), detail, value) from None
    complete_optimizer(merged)
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(MISSING_VALUE_MSG.format(key=missing[0]))
    # The rules of the objects the config builds are theirs, checked by their constructors
    # when `paxtrain.cli.build` builds them (`config.arguments` names the key); these are the
    # config's own: keys that no single object takes.
    _check_horizon(merged)
    _check_lora(merged)
    _check_checkpoint(merged)
    validate_optimizer(merged)
    start, max_steps = merged.trainer.profile.start_step, merged.trainer.max_steps
    if start is not None and max_steps >= 1 and start >= max_steps:  # the Profile can't know
        raise ConfigError(PROFILE_START_MSG.format(start=start, last=max_steps - 1))
    if merged.trainer.profile.memory and start is None:
        raise ConfigError(PROFILE_MEMORY_MSG)
    check_target(merged.data, "data")
    check_target(merged.model, "model", provided=None)  # some arguments come from the data
    for i, callback in enumerate(merged.callbacks):
        check_target(callback, f"callbacks[{i}]")
    return merged


def _check_horizon(cfg: DictConfig) -> None:
    """`optimizer.horizon`, a key of the config alone (what `${optimizer.horizon}` resolves to),
    counts steps: at least 1 when set."""
    value = cfg.optimizer.horizon
    if value is not None and value < 1:
        key = "optimizer.horizon"
        raise ConfigError(AT_LEAST_ONE_MSG.format(key=key, value=value, example=1000))


def _check_lora(cfg: DictConfig) -> None:
    """`finetune.lora` against the keys beside it: on only with a rank, and only on weights
    that `init_from` loads (frozen random weights are no base to adapt)."""
    lora = cfg.finetune.lora
    if lora.rank is None and lora.paths:
        raise ConfigError(LORA_WITHOUT_RANK_MSG)
    if lora.rank is not None and not cfg.init_from:
        raise ConfigError(LORA_WITHOUT_INIT_MSG.format(rank=lora.rank))


def _check_checkpoint(cfg: DictConfig) -> None:
    """`trainer.checkpoint.enabled`, a key of the config alone (false: no `Checkpointing` is
    built at all), against the settings that only a `Checkpointing` would use."""
    ck = cfg.trainer.checkpoint
    if ck.enabled:
        return
    for key, unset in (("keep_best", 0), ("monitor", "null")):
        if ck[key]:
            raise ConfigError(
                BEST_WITHOUT_CHECKPOINTS_MSG.format(key=key, value=ck[key], unset=unset)
            )


_INVALID_VALUE = re.compile(r"Invalid value '(.*)', expected one of")


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
    """The annotation of a schema key (`trainer.progress` -> `ProgressMode`), or None."""
    hint: Any = FitConfig
    for part in key.split("."):
        hint = typing.get_type_hints(hint).get(part) if dataclasses.is_dataclass(hint) else None
    return hint
