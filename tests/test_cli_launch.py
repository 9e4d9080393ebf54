"""`paxtrain fit -m --launcher`: sweeps submitted through submitit (its local executor here)."""

import os

import pytest
import yaml
from cli_support import CHAR_RNN, TINY_CHAR_RNN, run_paxtrain

submitit = pytest.importorskip("submitit")

FAST = [
    "trainer.max_steps=2",
    "optimizer.learning_rate.warmup_steps=0",
    "trainer.eval_every=null",
    "callbacks=[]",
    "trainer.plot=false",
]


# The jobs that run (submitit's local executor) are in the slow step; the default one checks the
# launcher's options and the Slurm submission, where nothing trains.
@pytest.mark.slow
def test_local_launcher_runs_one_job_per_sweep_point(tmp_path):
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *TINY_CHAR_RNN, *FAST, "optimizer.learning_rate.peak_value=1e-3,3e-3",
        "--launcher", "local", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("paxtrain: submitted sweep job") == 2
    (sweep,) = (tmp_path / "runs").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != "submitit")
    assert [p.name for p in runs] == [
        "0_optimizer.learning_rate.peak_value=0.001",
        "1_optimizer.learning_rate.peak_value=0.003",
    ]
    for run, lr in zip(runs, (1e-3, 3e-3)):
        assert (run / "metrics.jsonl").read_text().strip()
        assert any((run / "checkpoints").iterdir())
        assert (
            yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["learning_rate"][
                "peak_value"
            ]
            == lr
        )
    assert len(list(sweep.glob("submitit/*/*_log.out"))) == 2  # one log per job


def test_unknown_launcher_option_is_one_clear_error(tmp_path):
    options = tmp_path / "launcher.yaml"
    options.write_text("timeout_min: 5\ngpus: 2\n")
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", "optimizer.learning_rate.peak_value=1e-3,3e-3",
        "--launcher", "local", "--launcher-config", str(options), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown launcher option 'gpus'" in result.stderr
    assert "gpus_per_node" in result.stderr  # the valid options are listed
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing submitted


def test_launcher_without_sweep_is_a_config_error(tmp_path):
    result = run_paxtrain("fit", CHAR_RNN, "--launcher", "local", cwd=tmp_path)
    assert result.returncode == 2
    assert "use it with -m" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_failed_local_job_names_its_log(tmp_path):
    too_short = [*FAST, "data.seq_len=16", "data.max_chars=10"]  # fails as the data loads
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *too_short, "optimizer.learning_rate.peak_value=1e-3,3e-3", "--launcher", "local",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        "sweep job 0 (submitit job" in result.stderr and "too few for seq_len=16" in result.stderr
    )
    (sweep,) = (tmp_path / "runs").iterdir()
    for log in sweep.glob("submitit/*/*_log.err"):
        assert str(log) in result.stderr
    assert "Traceback" not in result.stderr


def _stand_in_slurm(bin_dir, record_dir):
    """`srun` and `sbatch` stand-ins: sbatch keeps each script it is given and answers with a
    job id, as Slurm's does; nothing runs."""
    bin_dir.mkdir()
    record_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" "{record_dir}/$(ls {record_dir} | wc -l).sh"\n'
        'echo "Submitted batch job 4242"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)


def test_slurm_sweep_is_one_job_array(tmp_path, monkeypatch):
    bin_dir, record_dir = tmp_path / "bin", tmp_path / "sbatch_calls"
    _stand_in_slurm(bin_dir, record_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    options = tmp_path / "launcher.yaml"
    options.write_text("array_parallelism: 2\npartition: gpu\n")
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *FAST, "seed=1,2,3", "--launcher", "slurm",
        "--launcher-config", str(options), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (script,) = record_dir.iterdir()  # one sbatch for the whole sweep
    lines = script.read_text().splitlines()
    assert [line for line in lines if "--array" in line] == ["#SBATCH --array=0-2%2"]
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --ntasks-per-node=8" in lines  # the Slurm defaults: a process per GPU
    for index in range(3):
        assert f"sweep job {index} as submitit job 4242_{index} (slurm)" in result.stdout
    # Array task i unpickles sweep point i, which trains in its own run directory.
    (sweep,) = (tmp_path / "runs").iterdir()
    for index, seed in enumerate((1, 2, 3)):
        pickled = sweep / "submitit" / f"4242_{index}" / f"4242_{index}_submitted.pkl"
        job = submitit.helpers.DelayedSubmission.load(pickled).function
        cfg = yaml.safe_load(job.config_yaml)
        assert cfg["seed"] == seed and cfg["run_dir"] == str(sweep / f"{index}_seed={seed}")
