"""A rule an object's constructor refuses is reported as the config key that set it, once: the
config layer checks none of those rules itself (`paxtrain.config.arguments`)."""

import pytest
from cli_support import CHAR_RNN

from paxtrain.cli.build import build_trainer
from paxtrain.config.arguments import config_error, naming_keys
from paxtrain.config.composition import compose
from paxtrain.errors import ArgumentError, ConfigError
from paxtrain.train.checkpointing import Checkpointing
from paxtrain.train.hooks import EarlyStopping

# (argument, the constructor's message, the config layer's message)
TRANSLATIONS = [
    ("max_steps", "max_steps is 0; it must be at least 1, e.g. max_steps=1000.",
     "`trainer.max_steps` is 0; it must be at least 1, e.g. `trainer.max_steps=1000`."),
    ("max_steps", "max_steps (10) must be a multiple of steps_per_call (3).",
     "`trainer.max_steps` (10) must be a multiple of steps_per_call (3)."),
    ("keep_best", "keep_best=1 needs the metric that ranks checkpoints: add monitor='eval/loss'.",
     "`trainer.checkpoint.keep_best=1` needs the metric that ranks checkpoints: add "
     "`trainer.checkpoint.monitor=eval/loss`."),
    ("patience", "`patience` is 0; it must be at least 1.",
     "`trainer.early_stopping.patience` is 0; it must be at least 1."),
    ("precision", "precision 'f8' is not a precision (quoted: 'trainer.precision=\"x\"').",
     "`trainer.precision`: precision 'f8' is not a precision (quoted: 'trainer.precision=\"x\"')."),
    ("loggers[1]", "Unknown logger 'tensorbord'.", "`trainer.loggers[1]`: Unknown logger 'tensorbord'."),
    ("hooks", "two hooks share the state key 'X'.", "`hooks`: two hooks share the state key 'X'."),
]  # fmt: skip


@pytest.mark.parametrize("argument, message, expected", TRANSLATIONS)
def test_a_constructors_message_names_the_config_key(argument, message, expected):
    assert str(config_error(ArgumentError(argument, message))) == expected


class BadEarlyStopping(EarlyStopping):
    def __init__(self):
        raise ArgumentError("monitor", "monitor is ''; name an eval metric, e.g. monitor=loss.")


class BadCheckpointing(Checkpointing):
    def __init__(self):
        raise ArgumentError("monitor", "monitor is ''; name an eval metric, e.g. monitor=loss.")


@pytest.mark.parametrize(
    "hook, section",
    [(BadEarlyStopping, "trainer.early_stopping"), (BadCheckpointing, "trainer.checkpoint")],
)
def test_a_key_of_several_sections_is_the_one_of_the_object_that_raised(hook, section):
    with pytest.raises(ConfigError) as info, naming_keys():
        hook()
    assert str(info.value) == (
        f"`{section}.monitor` is ''; name an eval metric, e.g. `{section}.monitor=loss`."
    )


def test_building_a_config_reports_the_key_and_composing_it_checks_no_constructor_rule(tmp_path):
    # Composing it is fine (nothing checks an unknown logger's name twice); building it is not.
    cfg = compose(CHAR_RNN, ["trainer.loggers=[jsonl,tensorbord]"])
    with pytest.raises(ConfigError, match=r"^`trainer.loggers\[1\]`: Unknown logger 'tensorbord'"):
        build_trainer(cfg, tmp_path)
