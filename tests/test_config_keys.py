"""`paxtrain options CONFIG`: every settable key with its type, value and one line of help."""

import re

import pytest
from cli_support import CHAR_RNN
from omegaconf import OmegaConf

from paxtrain.cli.app import main
from paxtrain.config.composition import compose
from paxtrain.config.keys import REQUIRED, argument_help, config_options
from paxtrain.config.schema import FitConfig


def _leaf_keys(node, prefix=""):
    keys = []
    for key, value in node.items():
        is_section = isinstance(value, dict) and key not in ("optimizer", "model", "data")
        keys += _leaf_keys(value, f"{prefix}{key}.") if is_section else [f"{prefix}{key}"]
    return keys


@pytest.fixture(scope="module")
def options():
    return {o.key: o for o in config_options(compose(CHAR_RNN, ["model=gru"]))}


def test_every_schema_key_is_listed_with_its_type_value_and_help(options):
    schema_keys = _leaf_keys(OmegaConf.to_container(OmegaConf.structured(FitConfig)))
    sections = {"optimizer", "model", "data"}  # `_target_` sections: their target's keys
    for key in schema_keys:
        if key in sections:
            assert f"{key}._target_" in options
            continue
        assert key in options, key
        assert options[key].help, f"{key} has no help"
    assert options["trainer.max_steps"].value == "1500"  # from the file
    assert options["trainer.ema_decay"].value == "null"  # from the schema
    assert options["trainer.progress"].type == "auto|bar|log|off"
    assert options["trainer.eval_every"].type == "int | None"
    assert options["trainer.log_every"].help == "steps between logged training metrics."
    assert options["trainer.checkpoint.enabled"].help == "false: no checkpoints (and no resume)."


def test_target_parameters_come_from_the_signature_and_docstring(options):
    assert options["model._target_"].value == "paxtrain.recipes.char_rnn.CharRNN"
    assert options["model.cell"].value == "gru"  # the override's config group
    assert options["model.vocab_size"].value.startswith("<data.info")  # given by the data
    max_chars = options["data.max_chars"]  # not in the file: the signature's default
    assert (max_chars.type, max_chars.value) == ("int | None", "null")
    assert max_chars.help == "truncate the corpus (for quick runs)."
    rate = options["optimizer.learning_rate.peak_value"]  # a nested section
    assert rate.value == "0.003" and rate.help.startswith("Peak value")
    assert options["optimizer.learning_rate.decay_steps"].value == "${optimizer.horizon}"
    assert options["optimizer.clip_grad_norm"].help.startswith("clip the gradients")
    assert options["callbacks[0].temperature"].value == "0.8"  # a list of sections


def test_every_listed_key_is_settable(options):
    """All listed scalar keys set at once to their listed values: compose accepts each."""
    overrides = [
        f"{key}={o.value}"
        for key, o in options.items()
        if "[" not in key and not key.endswith("_target_") and o.value != REQUIRED
        and not re.search(r"[\s${}\"'<\[]", o.value)
    ]  # fmt: skip
    assert len(overrides) > 40
    cfg = compose(CHAR_RNN, ["model=gru", *overrides])
    assert cfg.data.max_chars is None and cfg.data.eval_fraction == 0.1


def test_argument_help_reads_google_style_sections():
    def target(alpha, beta):
        """Does things.

        Args:
          alpha: the first. It has
            a second line.
          beta (int): the second, continued
            here.

        Returns:
          gamma: not an argument.
        """

    assert argument_help(target) == {"alpha": "the first.", "beta": "the second, continued here."}


def test_options_command_prints_the_table_and_reports_bad_input(capsys):
    assert main(["options", CHAR_RNN, "data.seq_len=64"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("data.seq_len "))
    assert line.split()[:3] == ["data.seq_len", "int", "64"] and "characters per example" in line
    assert main(["options", CHAR_RNN, "trainer.max_stesp=3"]) == 2
    assert "`trainer.max_steps`" in capsys.readouterr().err


def test_values_still_to_set_are_listed_not_refused(capsys):
    assert main(["options", "image_classifier", "data=npy"]) == 0  # `???`: the user's files
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert '{"images": "???", "labels": "???"}' in lines["data.train"]
    assert "model.num_classes" in lines and "<data.info or required>" in lines["model.num_classes"]
