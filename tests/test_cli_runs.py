"""Run directories: the saved config is the hashed one, and a resume says what it changes."""

import hashlib
import json
import types

import yaml
from cli_support import CHAR_RNN

from paxtrain.cli.build import build_trainer
from paxtrain.cli.runs import RunFiles, _run_info, config_changes, config_hash
from paxtrain.config.composition import compose


def save_run(run_dir, cfg):
    """What `paxtrain fit` writes when training starts: config.yaml and run.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    RunFiles(cfg, _run_info(cfg, None)).on_train_start(types.SimpleNamespace(run_dir=run_dir))


def test_run_json_hashes_the_saved_config_and_the_config_keeps_its_horizon(tmp_path):
    cfg = compose(CHAR_RNN, ["trainer.max_steps=400", f"run_dir={tmp_path}"])
    build_trainer(cfg, tmp_path)  # builds the optimizer over the horizon, without writing it
    save_run(tmp_path, cfg)
    text = (tmp_path / "config.yaml").read_text()
    assert yaml.safe_load(text)["optimizer"]["horizon"] is None
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded["config_hash"] == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert "schedule_horizon" not in recorded  # recorded once: with each checkpoint


def test_a_resume_lists_the_keys_its_config_changes(tmp_path):
    cfg = compose(CHAR_RNN, ["trainer.max_steps=400", f"run_dir={tmp_path}"])
    assert config_changes(tmp_path, cfg) == []  # a new run
    save_run(tmp_path, cfg)
    again = compose(tmp_path / "config.yaml", [])  # `paxtrain resume RUN_DIR`
    assert config_hash(again) == config_hash(cfg) and config_changes(tmp_path, again) == []
    longer = compose(tmp_path / "config.yaml", ["trainer.max_steps=800", "+optimizer.b1=0.8"])
    assert config_changes(tmp_path, longer) == [
        "optimizer.b1: (not set) -> 0.8",
        "trainer.max_steps: 400 -> 800",
    ]
