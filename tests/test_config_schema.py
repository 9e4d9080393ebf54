"""The config schema: Hydra's ConfigStore holds it, and it mirrors the objects it configures.

Each schema field must have the default and type of the parameter of the same name; every
parameter must be a field unless it is listed below, with where it is set instead and why.
A parameter added to `Trainer` (or the others) without its config key fails here.
"""

import collections.abc
import dataclasses
import enum
import inspect
import pathlib
import types
import typing

import pytest
from omegaconf import OmegaConf

from paxtrain.config import schema
from paxtrain.config.composition import PRIMARY_NAME, SCHEMA_NAME, compose
from paxtrain.config.schema import (
    CheckpointConfig,
    EarlyStoppingConfig,
    FitConfig,
    LoRAConfig,
    ProfileConfig,
    ProgressMode,
    TrainerConfig,
)
from paxtrain.config.targets import locate
from paxtrain.errors import ConfigError

# Parameter -> why the schema has no field of that name.
NOT_FIELDS = {
    TrainerConfig: {
        "run_dir": "the top-level `run_dir` key (default runs/<name>-<timestamp>)",
        "hooks": "built from the trainer section; the top-level `callbacks` add more",
        "step": "built from the trainer section's step keys (`StepSettings`)",
        "layout": "built from the top-level `mesh` and `parallel` sections",
        "checkpointing": "built from the `trainer.checkpoint` section",
        "seed": "the top-level `seed` key, which also seeds the model's initialization",
        "hyperparams": "the whole resolved config is logged",
        "init_from": "built from the top-level `init_from` and `init_from_include` keys",
    },
    CheckpointConfig: {
        "resume": "`paxtrain fit` always resumes a run directory that has checkpoints",
        "directory": "always RUN_DIR/checkpoints, where `paxtrain resume/eval` look",
        "meta": "the run's record (versions, config hash), written by `paxtrain fit`",
        "restart": "the command line's `--restart`: a start over is one command's choice, not "
        "a setting a run's config.yaml would repeat",
        "frozen_base": "the top-level `init_from` of a run with `finetune.lora`",
    },
    EarlyStoppingConfig: {},
    ProfileConfig: {},
    LoRAConfig: {
        "model": "the model the `model` section builds",
        "key": "drawn from the top-level `seed`, as the model's initialization",
    },
}

# Field -> its default, where it differs from the parameter's, and why.
DIFFERENT_DEFAULTS = {
    # The Python API asks for the length of a run; a config file may leave it out.
    (TrainerConfig, "max_steps"): 1000,
    # The parameter is required; None in the config means "no such hook", and builds none.
    (EarlyStoppingConfig, "monitor"): None,
    (ProfileConfig, "start_step"): None,
    # A section that builds the `EarlyStopping` object (none while its monitor is None).
    (TrainerConfig, "early_stopping"): EarlyStoppingConfig(),
    # Required by `apply_lora`; a rank of None means no LoRA, and the others have defaults.
    (LoRAConfig, "rank"): None,
    (LoRAConfig, "alpha"): 16.0,
    (LoRAConfig, "paths"): [],
}

# Fields of the schema that are no parameter: each switches a hook or is a sub-section.
EXTRA_FIELDS = {
    TrainerConfig: {"checkpoint", "profile"},
    CheckpointConfig: {"enabled"},
    EarlyStoppingConfig: set(),
    ProfileConfig: set(),
    LoRAConfig: set(),
}

# Each schema with the objects it configures (`schema.MIRRORS`): the trainer section sets the
# `Trainer`'s parameters, its `StepSettings` and its `default_hooks`.
MIRRORS = [
    (schema, tuple(locate(target, "") for target in targets))
    for schema, targets in schema.MIRRORS.items()
]


def _signature(targets):
    """The parameters of the targets together, and their type hints."""
    parameters, hints = {}, {}
    for target in targets:
        parameters.update(inspect.signature(target).parameters)
        hints.update(typing.get_type_hints(target.__init__ if inspect.isclass(target) else target))
    return parameters, hints


def _plain(hint):
    """A type as a config holds it: an Enum of strings is a str, a sequence is a list (YAML
    has no tuples), a `Logger`/`Mesh`/... object (or a section building one) any value."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = frozenset(_plain(a) for a in typing.get_args(hint))
        return typing.Any if typing.Any in members else members
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return str
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        return list
    if hint in (int, float, str, bool, type(None)):
        return hint
    return typing.Any


def _plain_default(value):
    if isinstance(value, enum.Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def _field_default(field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize(
    "schema, target", MIRRORS, ids=lambda x: x.__name__ if isinstance(x, type) else ""
)
def test_schema_fields_have_the_parameters_defaults_and_types(schema, target):
    parameters, hints = _signature(target)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    field_hints = typing.get_type_hints(schema)
    assert set(parameters) - set(fields) == set(NOT_FIELDS[schema])
    assert set(fields) - set(parameters) == EXTRA_FIELDS[schema]
    for name in set(fields) & set(parameters):
        field_type, parameter_type = _plain(field_hints[name]), _plain(hints[name])
        if (schema, name) in DIFFERENT_DEFAULTS:
            expected = DIFFERENT_DEFAULTS[schema, name]
            # A required parameter may be optional in the schema (None: not built).
            assert field_type in (parameter_type, frozenset({parameter_type, type(None)})), name
        else:
            expected = _plain_default(parameters[name].default)
            assert field_type == parameter_type, name
        assert _plain_default(_field_default(fields[name])) == expected, name


CHAR_RNN = str(pathlib.Path(__file__).parents[1] / "configs" / "char_rnn.yaml")


def test_the_schema_is_in_hydras_config_store_ahead_of_the_file():
    from hydra.core.config_store import ConfigStore

    cfg = compose(CHAR_RNN, [])
    stored = ConfigStore.instance().load(f"{SCHEMA_NAME}.yaml").node
    assert OmegaConf.get_type(stored) is FitConfig
    assert ConfigStore.instance().load(f"{PRIMARY_NAME}.yaml").node.defaults == [
        SCHEMA_NAME, "char_rnn", "_self_",
    ]  # fmt: skip
    assert cfg.trainer.max_steps == 1500 and cfg.trainer.grad_accum_steps == 1  # file, schema
    assert cfg.trainer.progress is ProgressMode.auto and cfg.trainer.progress == "auto"


def test_overrides_set_schema_keys_and_target_parameters_the_file_leaves_out():
    cfg = compose(CHAR_RNN, ["trainer.ema_decay=0.99", "data.max_chars=5000", "model=gru"])
    assert cfg.trainer.ema_decay == 0.99 and cfg.data.max_chars == 5000
    assert cfg.model.cell == "gru"
    with pytest.raises(ConfigError, match=r"Unknown config key `data.max_char`.*`data.max_chars`"):
        compose(CHAR_RNN, ["data.max_char=5000"])  # not a parameter of CharCorpus


def test_a_file_value_the_schema_refuses_names_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer: {max_steps: lots}\n")
    with pytest.raises(ConfigError, match=r"Config key `trainer.max_steps`: Value 'lots'"):
        compose(path, [])
    path.write_text("trainer: {checkpoint: {mode: biggest}}\n")
    with pytest.raises(
        ConfigError, match=r"`trainer.checkpoint.mode` is 'biggest'; choose one of \('min', 'max'\)"
    ):
        compose(path, [])
    with pytest.raises(ConfigError, match=r"`parallel.strategy` is 'pjit'; choose one of"):
        compose(CHAR_RNN, ["parallel.strategy=pjit"])


def test_fit_sets_keys_the_file_leaves_out(capsys):
    from paxtrain.cli.app import main

    args = ["fit", CHAR_RNN, "trainer.ema_decay=0.99", "data.max_chars=5000", "--cfg", "job"]
    assert main(args) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.trainer.ema_decay == 0.99 and printed.data.max_chars == 5000
    assert printed.trainer.progress == "auto"  # an Enum field prints as its value
