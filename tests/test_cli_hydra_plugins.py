"""`paxtrain fit -m` through Hydra's own multirun, with Hydra's real plugins (the `sweep` extra):
the Optuna sweeper, the joblib launcher and submitit's local launcher. The fits run in the
slow step; the checks made before anything runs are in the default one."""

import csv
import json
import math

import pytest
import yaml
from cli_support import CHAR_RNN, TINY_CHAR_RNN, run_paxtrain

from paxtrain.cli import multirun
from paxtrain.cli.sweep_results import OUTCOME_FILE
from paxtrain.errors import ConfigError

optuna = pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

# The tiny char_rnn, its `data.seq_len` left to the sweeps (a key is given once in a sweep).
FAST = [
    *(o for o in TINY_CHAR_RNN if not o.startswith("data.seq_len=")),
    "trainer.max_steps=4",
    "optimizer.learning_rate.warmup_steps=0",
    "trainer.eval_every=null",
    "callbacks=[]",
    "trainer.plot=false",
    "trainer.progress=off",
]
LR = "optimizer.learning_rate.peak_value"


def rows(sweep):
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def run_dirs(sweep):
    runs = [p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()]  # not .submitit
    return sorted(runs, key=lambda p: int(p.name.split("_")[0]))


def final_eval_loss(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["eval/loss"] for line in lines if "eval/loss" in line][-1]


def check_usual_run_files(run):
    for name in ("config.yaml", "run.json", "metrics.jsonl", OUTCOME_FILE):
        assert (run / name).is_file(), (run, name)
    assert any((run / "checkpoints").iterdir())
    assert list((run / "hparams").glob("events.out.tfevents.*"))  # TensorBoard's HParams
    assert not (run / ".hydra").exists()  # Hydra writes nothing of its own into a run


@pytest.mark.slow
def test_optuna_tpe_search_of_six_trials_records_the_best_trial(tmp_path):
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *FAST, "data.seq_len=16", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=6",
        "hydra.sweeper.sampler.seed=0", f"{LR}=tag(log, interval(1e-4, 1e-2))", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    table = rows(sweep)
    assert [r["job"] for r in table] == [str(i) for i in range(6)]
    assert {r["outcome"] for r in table} == {"finished"}
    values = [float(r["eval/loss"]) for r in table]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna"
    assert math.isclose(best["best_value"], min(values), rel_tol=1e-5)  # the table's 6 digits
    # The objective Optuna got is, bit for bit, the run's last eval/loss in its metrics.jsonl.
    finals = [final_eval_loss(run) for run in run_dirs(sweep)]
    assert best["best_value"] == min(finals)
    assert [f"{v:.6g}" for v in finals] == [r["eval/loss"] for r in table]
    (best_row,) = [r for r in table if float(r["eval/loss"]) == min(values)]
    assert best_row["overrides"] == f"{LR}={best['best_params'][LR]}"
    for run, row in zip(run_dirs(sweep), table):
        check_usual_run_files(run)
        lr = yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["learning_rate"][
            "peak_value"
        ]
        assert 1e-4 <= lr <= 1e-2 and row["overrides"] == f"{LR}={lr}"
        assert run.name == f"{row['job']}_{LR}={lr}"
    assert "| finished |" in result.stdout and "summary.md" in result.stdout


@pytest.mark.slow
def test_an_invalid_trial_fails_with_its_message_and_the_search_goes_on(tmp_path):
    # max_chars=200 is too short for seq_len=512: those trials fail as their data loads. The
    # seeded TPE sampler draws 512, 512, 16, 512 (its random start-up trials).
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *(o for o in FAST if not o.startswith("data.max_chars=")),
        "data.max_chars=200", "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=1",
        "data.seq_len=choice(16,512)", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    table = rows(sweep)
    outcomes = [(r["overrides"], r["outcome"].partition(":")[0]) for r in table]
    assert outcomes == [
        ("data.seq_len=512", "failed"),
        ("data.seq_len=512", "failed"),
        ("data.seq_len=16", "finished"),
        ("data.seq_len=512", "failed"),
    ]
    assert "too few for seq_len=512" in table[0]["outcome"]
    assert result.stderr.count("failed: `data` (paxtrain.data.text.CharCorpus)") == 3
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"] == {"data.seq_len": 16}
    assert f"{best['best_value']:.6g}" == table[2]["eval/loss"]


@pytest.mark.slow
def test_joblib_launcher_runs_every_job_on_two_workers(tmp_path):
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *FAST, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "seed=1,2", "data.seq_len=16,100000", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]  # two jobs' data cannot be read
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # Hydra's log: joblib's two workers
    (sweep,) = (tmp_path / "runs").iterdir()
    table = rows(sweep)
    assert [(r["overrides"], r["outcome"].partition(":")[0]) for r in table] == [
        ("seed=1 data.seq_len=16", "finished"),
        ("seed=1 data.seq_len=100000", "failed"),
        ("seed=2 data.seq_len=16", "finished"),
        ("seed=2 data.seq_len=100000", "failed"),
    ]
    for run in run_dirs(sweep)[::2]:
        check_usual_run_files(run)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_jobs_in_their_own_processes(tmp_path):
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *FAST, "data.seq_len=16", "hydra/launcher=submitit_local", "seed=1,2",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    assert [(r["overrides"], r["outcome"]) for r in rows(sweep)] == [
        ("seed=1", "finished"),
        ("seed=2", "finished"),
    ]
    runs = run_dirs(sweep)
    assert [p.name for p in runs] == ["0_seed=1", "1_seed=2"]
    for run in runs:
        check_usual_run_files(run)
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2  # one process each


def test_a_plugin_of_the_sweep_extra_not_installed_names_the_extra(monkeypatch):
    from hydra.core.config_store import ConfigStore

    listed = ConfigStore.list

    def without_optuna(self, path):
        return [n for n in listed(self, path) if n != "optuna.yaml"]

    monkeypatch.setattr(ConfigStore, "list", without_optuna)
    with pytest.raises(ConfigError) as error:
        multirun.check_plugins(["hydra/sweeper=optuna"])
    assert str(error.value) == (
        "`hydra/sweeper=optuna` needs Hydra's sweeper plugin hydra-optuna-sweeper, which is not "
        'installed: pip install -e ".[sweep]" (paxtrain\'s sweep extra).'
    )


def test_only_overrides_of_hydra_itself_go_through_hydra():
    assert multirun.uses_hydra(["hydra.sweeper.n_trials=3"])
    assert multirun.uses_hydra(["+hydra/launcher=joblib"])
    assert not multirun.uses_hydra(["hydra_size=3", "model.hydra=1,2"])
