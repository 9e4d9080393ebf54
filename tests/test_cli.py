"""`paxtrain fit` end to end, in subprocesses, with tiny settings."""

import json
import pathlib

import pytest
import yaml
from cli_support import CHAR_RNN, ROOT, TINY_CHAR_RNN, run_paxtrain

TINY = [
    *TINY_CHAR_RNN,
    "trainer.log_every=2",
    "trainer.eval_every=3",
    "callbacks.0.num_chars=20",
]


def paxtrain(*args: str, cwd: pathlib.Path = ROOT):
    return run_paxtrain(*args, cwd=cwd)


@pytest.fixture(scope="module")
def char_rnn_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "char"
    result = paxtrain(
        "fit",
        CHAR_RNN,
        *TINY,
        "trainer.max_steps=6",
        f"run_dir={run_dir}",
        "optimizer.learning_rate.peak_value=0.02",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_fit_writes_the_run_directory(char_rnn_run):
    run_dir, result = char_rnn_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "run.json", "metrics.jsonl", "curves.png", "sample.txt"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (
        saved["trainer"]["max_steps"] == 6
        and saved["optimizer"]["learning_rate"]["peak_value"] == 0.02
    )
    info = json.loads((run_dir / "run.json").read_text())
    assert info["jax"] and info["paxtrain"] and len(info["config_hash"]) == 12
    assert "--- sample" in result.stdout and "step 6/6" in result.stdout


def test_metrics_jsonl_and_tensorboard_agree(char_rnn_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = char_rnn_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    evals = {r["step"]: r["eval/bits_per_char"] for r in records if "eval/bits_per_char" in r}
    assert sorted(train) == [2, 4, 6] and sorted(evals) == [3, 6]
    assert all(0 < v < 10 for v in train.values())
    assert train[6] < train[2]  # it learns
    assert any("perf/tokens_per_s" in r for r in records)
    assert any("train/learning_rate" in r for r in records)

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tb_train = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb_train.keys() == train.keys()
    for step, value in train.items():
        assert tb_train[step] == pytest.approx(value, rel=1e-6)
    assert {e.step for e in events.Scalars("eval/bits_per_char")} == {3, 6}


def test_unknown_key_exits_2_naming_it():
    result = paxtrain("fit", "configs/char_rnn.yaml", "trainer.max_stesp=5")
    assert result.returncode == 2
    assert "trainer.max_stesp" in result.stderr and "trainer.max_steps" in result.stderr
    assert "Traceback" not in result.stderr


def test_cfg_job_prints_the_resolved_config():
    result = paxtrain("fit", "configs/char_rnn.yaml", "trainer.max_steps=900", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["trainer"]["max_steps"] == 900


@pytest.mark.slow  # two fits end to end; tests/test_cli_sweep.py checks the sweep itself
def test_multirun_makes_one_directory_per_value(tmp_path):
    result = paxtrain(
        "fit", CHAR_RNN, "-m", *TINY, "trainer.max_steps=3",
        "trainer.plot=false", "optimizer.learning_rate.peak_value=0.01,0.02", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())  # not the summary files
    assert runs == [
        "0_optimizer.learning_rate.peak_value=0.01",
        "1_optimizer.learning_rate.peak_value=0.02",
    ]
    for name, lr in zip(runs, (0.01, 0.02)):
        saved = yaml.safe_load((sweep / name / "config.yaml").read_text())
        assert saved["optimizer"]["learning_rate"]["peak_value"] == lr


def test_env_lists_versions_and_devices():
    result = paxtrain("env")
    assert result.returncode == 0
    assert "jax " in result.stdout and "device 0" in result.stdout
