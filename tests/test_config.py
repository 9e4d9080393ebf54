"""Config composition and validation: every mistake is one message naming the key."""

import pathlib

import pytest
from omegaconf import OmegaConf

from paxtrain.config.composition import compose
from paxtrain.config.schema import validate
from paxtrain.errors import ConfigError

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def test_char_rnn_config_composes_with_overrides():
    cfg = compose(
        CONFIGS / "char_rnn.yaml",
        ["trainer.max_steps=700", "optimizer.learning_rate.peak_value=0.01"],
    )
    assert cfg.trainer.max_steps == 700 and cfg.optimizer.learning_rate.peak_value == 0.01
    assert cfg.model._target_ == "paxtrain.recipes.char_rnn.CharRNN"
    assert cfg.trainer.log_every == 50  # from the file
    assert cfg.trainer.grad_accum_steps == 1  # from the schema default


def test_unknown_override_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError) as info:
        compose(CONFIGS / "char_rnn.yaml", ["trainer.max_stesp=5"])
    assert "Unknown config key `trainer.max_stesp`" in str(info.value)
    assert "`trainer.max_steps`" in str(info.value)


def test_unknown_key_in_a_file_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "data: {_target_: paxtrain.data.CharCorpus}\n"
        "model: {_target_: paxtrain.recipes.char_rnn.CharRNN}\n"
        "trainer: {max_step: 10}\n"
    )
    with pytest.raises(ConfigError, match=r"`trainer.max_step`"):
        compose(path, [])
    path.write_text(path.read_text().replace("trainer: {max_step: 10}", "optimizer: {lr: 0.1}"))
    with pytest.raises(ConfigError, match=r"section `optimizer` needs a `_target_`"):
        compose(path, [])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"`trainer.max_steps`"):
        compose(CONFIGS / "char_rnn.yaml", ["trainer.max_steps=lots"])


def test_bad_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"`trainer.progress` is 'fancy'; choose one of"):
        compose(CONFIGS / "char_rnn.yaml", ["trainer.progress=fancy"])


def test_unknown_optimizer_target_is_named():
    with pytest.raises(ConfigError, match=r"`optimizer._target_`: cannot import 'optax.adamx'"):
        compose(CONFIGS / "char_rnn.yaml", ["optimizer._target_=optax.adamx"])


def test_target_arguments_are_checked_against_the_signature():
    with pytest.raises(ConfigError) as info:
        compose(CONFIGS / "char_rnn.yaml", ["+model.hiden_dim=3"])
    message = str(info.value)
    assert "`model.hiden_dim` is not a parameter of paxtrain.recipes.char_rnn.CharRNN" in message
    assert "`hidden_dim`" in message
    with pytest.raises(ConfigError, match="cannot import 'paxtrain.recipes.nope.Model'"):
        compose(CONFIGS / "char_rnn.yaml", ["model._target_=paxtrain.recipes.nope.Model"])


def test_missing_sections_and_files():
    with pytest.raises(ConfigError, match="`data` needs a `_target_`"):
        validate(OmegaConf.create({"model": {"_target_": "paxtrain.recipes.char_rnn.CharRNN"}}))
    with pytest.raises(ConfigError, match="Config file not found"):
        compose("configs/nope.yaml", [])


def test_config_group_swaps_the_model():
    cfg = compose(CONFIGS / "char_rnn.yaml", ["model=gru", "model.hidden_dim=32"])
    assert cfg.model.cell == "gru" and cfg.model.hidden_dim == 32
    assert compose(CONFIGS / "char_rnn.yaml", []).model.cell == "lstm"


def test_a_target_switched_on_the_command_line_takes_its_own_parameters(tmp_path):
    """The README's nanoGPT line: `data._target_=TokenFile` with TokenFile's own keys, which
    the file's CharCorpus does not have, needs no `+`."""
    import numpy as np

    tokens = tmp_path / "train.bin"
    (np.arange(5000) % 50).astype(np.uint16).tofile(tokens)
    cfg = compose(
        "configs/transformer_lm.yaml",
        ["data._target_=paxtrain.data.TokenFile", f"data.path={tokens}",
         f"data.eval_path={tokens}", "data.vocab_size=50", "data.dtype=uint16"],
    )  # fmt: skip
    assert cfg.data._target_ == "paxtrain.data.TokenFile"
    assert (cfg.data.eval_path, cfg.data.vocab_size) == (str(tokens), 50)
    # The closest keys are TokenFile's (eval_fraction), not the file's CharCorpus's.
    with pytest.raises(ConfigError, match=r"Unknown config key `data.eval_pth`. Did you mean .*`data.eval_fraction`"):
        compose("configs/transformer_lm.yaml",
                ["data._target_=paxtrain.data.TokenFile", f"data.path={tokens}", "data.eval_pth=x"])  # fmt: skip
