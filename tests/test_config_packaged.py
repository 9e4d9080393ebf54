"""The recipes' configs ship inside the package: found by name from any directory, one copy
(the repository's `configs/` links to it), and old runs naming `recipes.X` still load."""

import sys

import pytest
import yaml
from cli_support import CHAR_RNN, ROOT
from omegaconf import OmegaConf

from paxtrain.cli.app import main
from paxtrain.cli.runs import legacy_recipe_overrides, load_run_config
from paxtrain.config.composition import compose
from paxtrain.config.packaged import find_config, packaged_config_names, packaged_configs_dir


def test_the_repository_configs_are_the_packaged_ones():
    assert (ROOT / "configs").resolve() == packaged_configs_dir()
    assert packaged_config_names() == ["char_rnn", "image_classifier", "llama_lm", "transformer_lm"]
    assert {p.name for p in (packaged_configs_dir() / "model").glob("*.yaml")} == {
        "gru.yaml",
        "lstm.yaml",
    }


# The recipe each packaged config trains, and its callbacks' targets.
RECIPES = {
    "char_rnn": ("paxtrain.recipes.char_rnn.CharRNN", ["paxtrain.recipes.char_rnn.PrintSample"]),
    "image_classifier": ("paxtrain.recipes.image_classifier.ImageClassifier", []),
    "llama_lm": ("paxtrain.recipes.llama_lm.LlamaLM", ["paxtrain.recipes.char_rnn.PrintSample"]),
    "transformer_lm": (
        "paxtrain.recipes.transformer_lm.TransformerLM",
        ["paxtrain.recipes.char_rnn.PrintSample"],
    ),
}


@pytest.mark.parametrize("name", packaged_config_names())
def test_every_packaged_config_composes_by_name_with_packaged_targets(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of the repository's where the user runs it
    cfg = compose(find_config(name), [])  # validated: every `_target_` imported and checked
    assert cfg.name == name
    assert (cfg.model._target_, [c._target_ for c in cfg.callbacks]) == RECIPES[name]


def test_config_groups_of_a_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compose(find_config("char_rnn"), []).model.cell == "lstm"
    assert compose(find_config("char_rnn"), ["model=gru"]).model.cell == "gru"


def test_a_file_of_that_name_comes_before_the_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("char_rnn") == str(packaged_configs_dir() / "char_rnn.yaml")
    (tmp_path / "char_rnn").write_text("name: mine\n")
    assert find_config("char_rnn") == "char_rnn"


def _old_run(run_dir):
    """A run directory as paxtrain wrote it before the recipes moved into the package."""
    saved = OmegaConf.to_yaml(compose(CHAR_RNN, []))
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(saved.replace("paxtrain.recipes.", "recipes."))
    return run_dir


def test_an_old_run_naming_recipes_loads_with_the_packaged_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = _old_run(tmp_path / "old")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["_target_"] == (
        "recipes.char_rnn.CharRNN"
    )
    cfg = load_run_config(run_dir, ["trainer.max_steps=700"])
    assert cfg.model._target_ == "paxtrain.recipes.char_rnn.CharRNN"
    assert cfg.callbacks[0]._target_ == "paxtrain.recipes.char_rnn.PrintSample"
    assert cfg.trainer.max_steps == 700
    # The user's own override of a target wins over the mapping.
    cfg = load_run_config(run_dir, ["callbacks.0._target_=paxtrain.recipes.char_rnn.PrintSample"])
    assert cfg.callbacks[0].num_chars == 300


def test_a_users_own_recipes_module_is_not_remapped(tmp_path, monkeypatch):
    run_dir = _old_run(tmp_path / "old")
    (tmp_path / "project" / "recipes").mkdir(parents=True)
    (tmp_path / "project" / "recipes" / "char_rnn.py").write_text("CharRNN = PrintSample = None\n")
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(tmp_path / "project"))
        try:
            assert legacy_recipe_overrides(run_dir / "config.yaml") == []
        finally:
            sys.modules.pop("recipes", None)
    assert legacy_recipe_overrides(run_dir / "config.yaml") == [
        "model._target_=paxtrain.recipes.char_rnn.CharRNN",
        "callbacks.0._target_=paxtrain.recipes.char_rnn.PrintSample",
    ]


@pytest.mark.parametrize(
    "config, project_root", [("configs/char_rnn.yaml", ROOT), ("char_rnn", None)]
)
def test_fit_puts_the_project_root_of_a_config_file_on_the_path_never_paxtrains_folder(
    config, project_root, tmp_path, monkeypatch, capsys
):
    """`_target_`s of the user's project are importable from the parent of a config file's
    `configs/` folder, found without following links (the repository's `configs/` leads into
    paxtrain's own folder, whose subpackages would then shadow top-level modules: `data`...)."""
    cwd = ROOT if project_root else tmp_path
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)
    assert main(["fit", config, "--cfg", "job"]) == 0, capsys.readouterr().err
    added = sys.path[: len(sys.path) - len(before)]
    assert added == [str(cwd), *([str(project_root)] if project_root else [])]
