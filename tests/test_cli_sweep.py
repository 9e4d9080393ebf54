"""Sweep expansion (`paxtrain fit -m`) through Hydra's public override parser, and the sweep's
result table."""

import csv
import types

import pytest
from cli_support import CHAR_RNN, TINY_CHAR_RNN, run_paxtrain

from paxtrain.cli.sweep import sweep_overrides
from paxtrain.cli.sweep_results import JobOutcome, summary_table
from paxtrain.errors import ConfigError


def test_cartesian_product_in_key_order_with_fixed_overrides_in_each():
    jobs = sweep_overrides(["a=1,2", "b=x", "c=choice(p,q,r)"])
    assert jobs == [[f"a={a}", "b=x", f"c={c}"] for a in ("1", "2") for c in ("p", "q", "r")]


def test_range_is_half_open_with_a_step():
    assert sweep_overrides(["seed=range(0,7,3)"]) == [["seed=0"], ["seed=3"], ["seed=6"]]
    assert sweep_overrides(["seed=range(3)"]) == [["seed=0"], ["seed=1"], ["seed=2"]]


def test_no_sweep_is_one_job_and_prefixes_and_groups_are_kept():
    overrides = ["+trainer.ema_decay=0.99", "~callbacks", "model=gru", "data.path=/x/y.txt"]
    assert sweep_overrides(overrides) == [overrides]


def test_a_list_value_is_one_value_not_a_sweep():
    assert sweep_overrides(["trainer.loggers=[jsonl,tensorboard]", "seed=1,2"]) == [
        ["trainer.loggers=[jsonl,tensorboard]", "seed=1"],
        ["trainer.loggers=[jsonl,tensorboard]", "seed=2"],
    ]


def test_a_swept_key_given_twice_is_refused_not_run_as_its_last_value():
    # Issue 23 item 9: `-m seed=1,2,3 seed=5` ran one job (seed=5) in silence.
    with pytest.raises(ConfigError) as error:
        sweep_overrides(["seed=1,2,3", "seed=5"])
    assert str(error.value) == (
        "`seed` is given twice in a sweep ('seed=1,2,3' and 'seed=5'), which would run only the "
        "last: give its values once, e.g. `seed=1,2,3,5`."
    )
    # Two plain values keep the last, as in one `paxtrain fit`.
    assert sweep_overrides(["seed=1", "seed=5", "a=1,2"]) == [["seed=5", "a=1"], ["seed=5", "a=2"]]


def test_interval_and_bad_syntax_are_config_errors():
    with pytest.raises(
        ConfigError, match=r"`optimizer.learning_rate=interval\(0,1\)` is a interval"
    ):
        sweep_overrides(["optimizer.learning_rate=interval(0,1)"])
    with pytest.raises(ConfigError, match=r"Override 'seed=range\(1,' cannot be parsed"):
        sweep_overrides(["seed=range(1,"])


def test_the_table_shows_what_differs_marks_the_best_and_quotes_failures():
    jobs = [
        JobOutcome(0, ["a=1", "b=x"], "finished", "eval/accuracy", 0.5, "", "r/0", 0),
        JobOutcome(1, ["a=2", "b=x"], "failed", "", None, "bad | data", "r/1", 2),
        JobOutcome(2, ["a=3", "b=x"], "stopped early", "eval/accuracy", 0.75, "no gain", "r/2", 0),
    ]
    text, markdown = summary_table(jobs, mode="max")
    assert text.splitlines() == [
        "job,overrides,outcome,eval/accuracy,run_dir",
        "0,a=1,finished,0.5,r/0",
        "1,a=2,failed: bad | data,,r/1",
        "2,a=3,stopped early: no gain,0.75,r/2",
    ]
    assert markdown.splitlines()[2:] == [
        "| 0 | a=1 | finished | 0.5 | r/0 |",
        "| 1 | a=2 | failed: bad \\| data |  | r/1 |",
        "| 2 | a=3 | stopped early: no gain | 0.75 * | r/2 |",
    ]


@pytest.mark.slow
def test_a_job_whose_data_fails_does_not_end_the_sweep(tmp_path):
    # Issue 23 item 9: the first job's data error ended the sweep; the second never ran.
    tiny = [o for o in TINY_CHAR_RNN if not o.startswith("data.seq_len=")]  # swept here
    fast = ["trainer.max_steps=3", "trainer.eval_every=null", "callbacks=[]", "trainer.plot=false"]
    result = run_paxtrain(
        "fit", CHAR_RNN, "-m", *tiny, *fast, "data.seq_len=100000,16", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        "paxtrain: sweep job 0 (" in result.stderr and "too few for seq_len=100000" in result.stderr
    )
    (sweep,) = (tmp_path / "runs").iterdir()
    with open(sweep / "summary.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["job", "overrides", "outcome", "eval/loss", "run_dir"]
    assert rows[1][:2] == ["0", "data.seq_len=100000"] and rows[1][3] == ""
    assert rows[1][2].startswith("failed: `data` (paxtrain.data.text.CharCorpus)")
    assert rows[2][:3] == ["1", "data.seq_len=16", "finished"] and float(rows[2][3]) > 0
    assert (sweep / "1_data.seq_len=16" / "checkpoints").is_dir()
    assert "| 1 | data.seq_len=16 | finished |" in result.stdout


def test_each_job_records_its_outcome_and_hparams_for_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from paxtrain.cli.sweep_results import _record, read_outcomes, write_summary

    run = tmp_path / "0_lr=0.003"
    outcome = JobOutcome(
        0, ["lr=0.003", "model=gru"], "finished", "eval/loss", 1.25, "", str(run), 0
    )
    _record(outcome)
    assert read_outcomes(tmp_path) == [outcome]
    events = EventAccumulator(str(run / "hparams"))
    events.Reload()
    assert events.Scalars("final/eval/loss")[0].value == 1.25
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["lr"].number_value == 0.003
    assert start.hparams["model"].string_value == "gru"
    assert start.hparams["outcome"].string_value == "finished"
    table = write_summary(tmp_path).splitlines()  # one job: all its overrides shown
    assert table[2] == f"| 0 | lr=0.003 model=gru | finished | 1.25 * | {run} |"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0_lr=0.003", "summary.csv", "summary.md"]


class StubTrainer:
    """What `run_sweep_job` reads of a trainer after `fit_from_config`."""

    def __init__(self, loss, stop_reason=None, preempted=None, nonfinite=False):
        self.eval_history = [(10, {"loss": loss, "bits_per_char": loss * 1.44})]
        self.step, self.state = 10, types.SimpleNamespace(extras={})  # no step skipped
        self.stop_reason, self.preempted, self.stopped_on_nonfinite = (
            stop_reason,
            preempted,
            nonfinite,
        )


@pytest.mark.parametrize(
    "trainer, outcome, value, code",
    [
        (StubTrainer(1.5), ("finished", ""), 1.5, 0),
        (StubTrainer(1.5, stop_reason="no gain in 3 evals"), ("stopped early", "no gain in 3 evals"), 1.5, 0),
        (StubTrainer(float("nan")), ("failed", "the final evaluation is not finite"), None, 3),
        (StubTrainer(1.5, stop_reason="preempted by SIGTERM at step 10", preempted="SIGTERM"), ("preempted", "preempted by SIGTERM at step 10"), 1.5, 75),
    ],
)  # fmt: skip
def test_a_job_outcome_says_how_the_fit_ended(trainer, outcome, value, code, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from paxtrain.cli import fit
    from paxtrain.cli.sweep_results import run_sweep_job

    monkeypatch.setattr(fit, "fit_from_config", lambda cfg, config_path, restart=False: trainer)
    monitor = {"monitor": None, "mode": "min"}
    cfg = OmegaConf.create(
        {
            "run_dir": str(tmp_path / "0"),
            "trainer": {"checkpoint": monitor, "early_stopping": monitor},
        }
    )
    job = run_sweep_job(0, ["seed=1"], cfg.run_dir, "c.yaml", cfg)
    assert (job.outcome, job.message[: len(outcome[1])]) == outcome
    assert (job.metric, job.value, job.exit_code) == ("eval/loss", value, code)


def test_a_job_whose_config_is_refused_fails_alone(tmp_path, capsys):
    from paxtrain.cli.sweep_results import run_sweep_job

    def refused():
        raise ConfigError("`trainer.max_steps` is 0: give at least 1.")

    job = run_sweep_job(3, ["trainer.max_steps=0"], str(tmp_path / "3"), "c.yaml", refused)
    assert (job.outcome, job.message, job.value, job.exit_code) == (
        "failed",
        "`trainer.max_steps` is 0: give at least 1.",
        None,
        2,
    )
    assert capsys.readouterr().err == (
        f"paxtrain: sweep job 3 ({tmp_path / '3'}) failed: `trainer.max_steps` is 0: give at least 1.\n"
    )
    assert (tmp_path / "3" / "outcome.json").is_file()


def test_a_sweep_directory_used_again_tables_the_newest_sweep_only(tmp_path):
    from paxtrain.cli.sweep_results import _record, new_sweep_id, read_outcomes

    def job(index, sweep):
        run = str(tmp_path / f"{index}_seed={index}")
        return JobOutcome(index, [f"seed={index}"], "finished", "eval/loss", 1.0, "", run, 0, sweep)

    first, second = "2026-12-07T10:00:00.000001", new_sweep_id()
    assert first < second
    for index in range(3):
        _record(job(index, first))
    _record(job(0, second))  # the second sweep has one job: its dir is the first's job 0
    assert read_outcomes(tmp_path) == [job(0, second)]


def test_a_grid_sweep_passes_restart_to_every_job(tmp_path, monkeypatch, capsys):
    # `paxtrain fit ... -m a=1,2 --restart`: each job may start over where its run directory
    # has no readable checkpoint, as `paxtrain fit ... --restart` does.
    from paxtrain.cli import fit
    from paxtrain.cli.app import main

    started = []

    def fit_from_config(cfg, config_path, restart=False):
        started.append((cfg.seed, restart))
        return StubTrainer(1.5)

    monkeypatch.setattr(fit, "fit_from_config", fit_from_config)
    sweep = tmp_path / "sweep"
    argv = ["fit", CHAR_RNN, *TINY_CHAR_RNN, f"run_dir={sweep}", "-m", "seed=1,2"]
    assert main([*argv, "--restart"]) == 0
    assert started == [(1, True), (2, True)]
    started.clear()
    assert main(argv) == 0
    assert started == [(1, False), (2, False)]
