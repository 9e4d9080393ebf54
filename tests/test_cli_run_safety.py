"""No lost or wrong results: best checkpoints, resume horizon, hook state, non-finite exit
codes, and a run directory that is data, never code."""

import dataclasses
import inspect
import json
import re

import numpy as np
import optax
import pytest
import yaml
from cli_support import CHAR_RNN
from conftest import PoisonedData, Regression, RegressionData, read_jsonl
from test_checkpoint_store import make_state

import paxtrain as pax
from paxtrain.checkpoint.store import CheckpointManager
from paxtrain.cli.app import main
from paxtrain.cli.build import check_schedule_end, schedule_horizon
from paxtrain.cli.fit import exit_code, final_eval_is_finite
from paxtrain.cli.runs import check_run_targets
from paxtrain.config.composition import compose
from paxtrain.errors import ConfigError
from paxtrain.train import EarlyStopping, Hook, StepSettings, Trainer, default_hooks
from paxtrain.train.checkpointing import Checkpointing
from paxtrain.train.settings import Layout

HOOK_OPTIONS = set(inspect.signature(default_hooks).parameters)
STEP_OPTIONS = {field.name for field in dataclasses.fields(StepSettings)}
LAYOUT_OPTIONS = {field.name for field in dataclasses.fields(Layout)}


def trainer_for(run_dir, max_steps, **options):
    """A trainer with `options` of `default_hooks`, `StepSettings`, `Layout` or `Trainer`."""
    options = {"log_every": 2, "eval_every": 5, "progress": "off", "plot": False, **options}
    step = StepSettings(**{k: v for k, v in options.items() if k in STEP_OPTIONS})
    hooks = default_hooks(**{k: v for k, v in options.items() if k in HOOK_OPTIONS})
    layout = Layout(**{k: v for k, v in options.items() if k in LAYOUT_OPTIONS})
    taken = HOOK_OPTIONS | STEP_OPTIONS | LAYOUT_OPTIONS
    rest = {k: v for k, v in options.items() if k not in taken}
    return Trainer(
        max_steps=max_steps, run_dir=run_dir, hooks=hooks, step=step, layout=layout,
        loggers=["jsonl"], **rest,
    )  # fmt: skip


def test_each_checkpoint_records_the_eval_of_its_own_step(tmp_path):
    pax.seed_rng_key(0)
    ck = Checkpointing(every_steps=5, keep_last=4, monitor="eval/loss", async_save=False)
    trainer = trainer_for(tmp_path, 20, eval_every=10, checkpointing=ck)
    trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
    evals = dict(trainer.eval_history)
    manager = CheckpointManager(tmp_path / "checkpoints", monitor="eval/loss", read_only=True)
    assert manager.steps() == [5, 10, 15, 20]
    recorded = {s: manager._manager.metrics(s) for s in manager.steps()}
    # Steps 5 and 15 had no evaluation; 20 (a multiple of every_steps) is saved after its own.
    assert recorded[5] is None and recorded[15] is None
    assert recorded[10]["eval/loss"] == evals[10]["loss"]
    assert recorded[20]["eval/loss"] == evals[20]["loss"] != evals[10]["loss"]
    assert manager.best_step() == min((evals[s]["loss"], s) for s in (10, 20))[1]


class Counter(Hook):
    """A user hook with state: how many steps it saw, across resumes."""

    def __init__(self):
        self.seen = 0

    def on_step(self, trainer, metrics):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class StopAt(Hook):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, metrics):
        if trainer.step == self.step:
            trainer.stop("test stop")


def test_a_resumed_run_logs_and_keeps_hook_state_like_an_uninterrupted_one(tmp_path):
    def run(run_dir, *extra_hooks):
        pax.seed_rng_key(0)
        stopper, counter = EarlyStopping("eval/loss", patience=50, min_delta=1e-3), Counter()
        trainer = trainer_for(
            run_dir, 9, log_every=2, eval_every=3, early_stopping=stopper,
            hooks=[counter, *extra_hooks],
            checkpointing=Checkpointing(every_steps=100, async_save=False),
        )  # fmt: skip
        trainer.fit(Regression(), RegressionData(noise=0.5), optax.adam(0.05))
        return stopper, counter

    whole_stopper, whole_counter = run(tmp_path / "whole")
    run(tmp_path / "split", StopAt(5))  # stops at an odd step, between two log steps
    split_stopper, split_counter = run(tmp_path / "split")

    def train_logs(run_dir):
        return {
            r["step"]: {k: v for k, v in r.items() if k.startswith("train/")}
            for r in read_jsonl(run_dir)
            if "train/loss" in r
        }

    whole, split = train_logs(tmp_path / "whole"), train_logs(tmp_path / "split")
    assert sorted(whole) == [2, 4, 6, 8, 9]
    for step in (6, 8, 9):  # 6 averages steps 5 (before the stop) and 6 (after the resume)
        assert split[step] == whole[step], step
    assert split_counter.seen == whole_counter.seen == 9
    assert (split_stopper.best, split_stopper.bad_evals) == (
        whole_stopper.best,
        whole_stopper.bad_evals,
    )


def test_stopping_on_nonfinite_steps_has_its_own_exit_code(tmp_path):
    trainer = trainer_for(tmp_path, 20, on_nonfinite="stop")
    trainer.fit(Regression(), PoisonedData({5}), optax.adam(0.1))
    assert trainer.stopped_on_nonfinite and exit_code(trainer) == 3
    clean = trainer_for(tmp_path / "clean", 2)
    clean.fit(Regression(), RegressionData(), optax.adam(0.1))
    assert exit_code(clean) == 0


@pytest.mark.parametrize("bad_steps, failed", [({5, 9}, False), ({5, 9, 13}, True)])
def test_a_run_that_skipped_over_a_tenth_of_its_steps_fails_with_exit_code_3(
    tmp_path, bad_steps, failed
):
    from paxtrain.train.nonfinite import MAX_SKIPPED_FRACTION, skipped_steps, skipped_too_many

    trainer = trainer_for(tmp_path, 20)  # 2 of 20 skipped: 10%, not more
    trainer.fit(Regression(), PoisonedData(bad_steps), optax.adam(0.1))
    assert int(skipped_steps(trainer.state)) == len(bad_steps) and MAX_SKIPPED_FRACTION == 0.1
    assert not trainer.stopped_on_nonfinite and final_eval_is_finite(trainer)
    assert exit_code(trainer) == (3 if failed else 0)
    message = skipped_too_many(trainer.state, trainer.step)
    assert (message is not None) is failed
    if failed:
        assert message.startswith("3 of the run's 20 steps were skipped")
        assert "exit code 3" in message


def test_a_run_whose_final_evaluation_is_not_finite_fails_with_exit_code_3(tmp_path):
    class NaNEval(RegressionData):
        def eval_batches(self):
            return ({"x": b["x"], "y": b["y"] * np.nan} for b in super().eval_batches())

    trainer = trainer_for(tmp_path, 4)
    trainer.fit(Regression(), NaNEval(), optax.adam(0.1))
    assert not trainer.stopped_on_nonfinite and not final_eval_is_finite(trainer)
    assert exit_code(trainer) == 3


def test_resume_keeps_the_schedule_horizon_of_the_checkpoint(tmp_path, capsys):
    manager = CheckpointManager(tmp_path / "checkpoints", async_save=False)
    manager.save(make_state(step=4), meta={"schedule_horizon": 10})
    manager.close()
    longer = compose(CHAR_RNN, ["trainer.max_steps=300"])
    assert schedule_horizon(longer, tmp_path) == 10
    out = capsys.readouterr().out
    assert "keeps its horizon of 10 steps" in out and "optimizer.horizon=300" in out
    stretched = compose(CHAR_RNN, ["trainer.max_steps=300", "optimizer.horizon=300"])
    assert schedule_horizon(stretched, tmp_path) == 300
    assert schedule_horizon(longer, tmp_path / "new_run") == 300


def test_a_resume_past_the_schedule_end_must_choose_and_is_told_each_choice_s_rate(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", async_save=False)
    manager.save(make_state(step=4), meta={"schedule_horizon": 10})
    manager.close()

    def rate(step, horizon, peak=3e-3, warmup=2):  # optax's warmup cosine, from its definition
        done = min(step - warmup, horizon - warmup) / (horizon - warmup)
        return peak * 0.5 * (1 + np.cos(np.pi * done))

    schedule = ["optimizer.learning_rate.warmup_steps=2", "trainer.max_steps=300"]
    with pytest.raises(ConfigError) as refused:
        check_schedule_end(compose(CHAR_RNN, schedule), tmp_path)
    message = str(refused.value)
    assert "(optax.warmup_cosine_decay_schedule over 10 steps" in message
    assert "steps 11 to 300 would train at its final rate, 0." in message
    assert f"`optimizer.horizon=300` (the rate at step 5 becomes {rate(4, 300):g})" in message
    assert "train on at 0 with `optimizer.horizon=10`" in message
    kept = check_schedule_end(compose(CHAR_RNN, [*schedule, "optimizer.horizon=10"]), tmp_path)
    assert kept == (
        f"paxtrain: resuming at step 4: learning rate {rate(4, 10):g}, then 0 at step 300 "
        "(the schedule spans 10 steps)"
    )
    stretched = check_schedule_end(
        compose(CHAR_RNN, [*schedule, "optimizer.horizon=300"]), tmp_path
    )
    first, last = re.search(r"learning rate (\S+), then (\S+) at step 300", stretched).groups()
    np.testing.assert_allclose([float(first), float(last)], [rate(4, 300), rate(299, 300)], 1e-3)
    assert check_schedule_end(compose(CHAR_RNN, schedule), tmp_path / "new_run") is None


def test_eval_best_on_a_run_without_monitor_says_how_to_enable_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose(CHAR_RNN, ["optimizer.horizon=1500"])  # a run's saved config records it
    (run_dir / "config.yaml").write_text(yaml.safe_dump(pax_to_container(cfg)))
    assert main(["eval", str(run_dir), "--step", "best"]) == 2
    err = capsys.readouterr().err
    assert "trainer.checkpoint.monitor=eval/loss" in err and "Traceback" not in err


def pax_to_container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_a_run_directory_naming_os_system_is_refused(tmp_path, capsys, command):
    run_dir = tmp_path / "downloaded"
    run_dir.mkdir()
    marker = tmp_path / "pwned"
    cfg = pax_to_container(compose(CHAR_RNN, []))
    cfg["data"] = {"_target_": "os.system", "command": f"touch {marker}"}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main([command, str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paxtrain: ") and err.count("\n") == 1
    assert "`_target_: os.system` (at `data`)" in err
    assert "--allow-target os" in err and "PAXTRAIN_ALLOW_TARGETS=os" in err
    assert not marker.exists()


def test_allowed_and_overridden_targets_pass(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(
        json.dumps(
            {"data": {"_target_": "my_project.data.Set"}, "callbacks": [{"_target_": "x.Y"}]}
        )
    )
    with pytest.raises(ConfigError, match="my_project.data.Set"):
        check_run_targets(path, [])
    with pytest.raises(ConfigError, match="x.Y"):
        check_run_targets(path, [], allow=("my_project",))
    check_run_targets(path, ["callbacks=[]"], allow=("my_project",))
    monkeypatch.setenv("PAXTRAIN_ALLOW_TARGETS", "my_project, x")
    check_run_targets(path, [])
    check_run_targets(path, ["data._target_=other.Data"], allow=("x",))  # the user's own choice


def test_a_second_writer_gets_a_clear_error_and_the_first_run_is_untouched(tmp_path):
    from paxtrain.train.run_lock import RunLock

    holder = RunLock(tmp_path)
    holder.acquire()
    trainer = trainer_for(tmp_path, 4)
    with pytest.raises(ConfigError, match=r"is in use by another paxtrain run \(\{\"pid\": \d+"):
        trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
    assert not (tmp_path / "metrics.jsonl").exists()
    holder.release()
    trainer.fit(Regression(), RegressionData(), optax.adam(0.1))  # free again
    assert trainer.step == 4


def test_the_lock_of_a_killed_process_is_not_stale(tmp_path):
    import signal
    import subprocess
    import sys

    from paxtrain.train.run_lock import RunLock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom paxtrain.train.run_lock import RunLock\n"
         f"lock = RunLock({str(tmp_path)!r})\nlock.acquire()\nprint('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f'"pid": {holder.pid}'):
        RunLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # the kernel released it with the process; the file left behind is harmless
    lock.release()


def test_metrics_jsonl_is_strict_json_with_null_for_nonfinite_and_marks_repeats(tmp_path):
    from paxtrain.train.logger import LoggerGroup, latest_by_step, read_metrics
    from paxtrain.train.plot import plot_run

    with LoggerGroup(["jsonl"], tmp_path) as logger:
        logger.write(1, {"train/loss": 2.0})
        logger.write(2, {"train/loss": float("nan"), "train/grad_norm": float("inf")})
    with LoggerGroup(["jsonl"], tmp_path) as logger:  # a resume from step 1
        logger.write(2, {"train/loss": 1.5})
        logger.write(3, {"train/loss": 1.0})
        logger.write(3, {"eval/loss": 1.2})  # the same step's eval: no repeat

    def strict(text):
        raise ValueError(f"not strict JSON: {text}")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=strict) for line in lines]
    assert records[1] == {
        "step": 2, "train/loss": None, "train/grad_norm": None,
        "nonfinite": ["train/loss", "train/grad_norm"],
    }  # fmt: skip
    assert records[2] == {"step": 2, "train/loss": 1.5, "repeated": True}
    assert "repeated" not in records[3] and "repeated" not in records[4]
    assert read_metrics(tmp_path) == records
    assert latest_by_step(records, "train/loss") == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert plot_run(tmp_path).stat().st_size > 1000
