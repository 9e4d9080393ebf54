"""No lost or wrong results: best checkpoints, resume horizon, hook state, non-finite exit
codes, and a run directory that is data, never code."""

import dataclasses
import errno
import inspect
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from cli_support import CHAR_RNN, TINY_CHAR_RNN
from conftest import PoisonedData, Regression, RegressionData, read_jsonl
from test_checkpoint_store import make_state

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.checkpoint.store import CheckpointManager
from paxtrain.cli.app import main
from paxtrain.cli.build import check_schedule_end, schedule_horizon
from paxtrain.cli.fit import exit_code, final_eval_is_finite
from paxtrain.cli.runs import check_run_targets
from paxtrain.config.composition import compose
from paxtrain.data import CharCorpus
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


def test_the_end_of_a_run_that_skipped_too_many_steps_says_why_once(monkeypatch, capsys):
    # Why the run failed is worked out once (it reads the skipped count off the devices).
    from types import SimpleNamespace

    from paxtrain.cli import fit
    from paxtrain.train import nonfinite

    calls = []

    def skipped_too_many(state, step):
        calls.append(step)
        return "3 of the run's 20 steps were skipped"

    monkeypatch.setattr(nonfinite, "skipped_too_many", skipped_too_many)
    trainer = SimpleNamespace(
        eval_history=[], preempted=False, nothing_to_train=True, stop_reason=None,
        stopped_on_nonfinite=False, state=None, step=20,
    )  # fmt: skip
    fit.report_end(trainer, pathlib.Path("runs/demo"), 1.0)
    assert capsys.readouterr().out == "paxtrain: 3 of the run's 20 steps were skipped\n"
    assert calls == [20]


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


class Wide(pax.Module):
    """Regression through a wide layer: megabytes of state, whose save is still being
    written when the next hook runs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1024) >> nn.Linear(1024, 1024) >> nn.Linear(1024, 1)

    def loss(self, batch):
        loss = jnp.mean((self.net(batch["x"]) - batch["y"]) ** 2)
        return loss, {}


class SecondOrbaxWriter(Hook):
    """What a user types in a notebook beside a live run: an Orbax `CheckpointManager` on its
    checkpoints, as a writer that cleans up temporary directories (the save in flight's)."""

    order = 2  # after the checkpointing hook's save of the step

    def __init__(self, steps):
        self.steps, self.in_flight = set(steps), []

    def on_step(self, view, metrics):
        import orbax.checkpoint as ocp

        if view.step not in self.steps:
            return
        directory = view.checkpoints.directory
        self.in_flight += [p.name for p in directory.glob("*.orbax-checkpoint-tmp*")]
        options = ocp.CheckpointManagerOptions(cleanup_tmp_directories=True)
        ocp.CheckpointManager(directory, options=options).close()


def test_a_second_orbax_writer_deleting_a_save_in_flight_does_not_kill_the_run(tmp_path):
    # Issue 23: the run exited 2 with FileNotFoundError on its save (4 of 4 tries).
    writer = SecondOrbaxWriter(steps=[4])
    ck = Checkpointing(every_steps=2, keep_last=10, async_save=True)
    trainer = trainer_for(tmp_path, 8, checkpointing=ck, hooks=[writer], eval_every=100)
    with pytest.warns(UserWarning) as caught:
        trainer.fit(Wide(), RegressionData(), optax.adam(0.1))
    assert writer.in_flight == ["4.orbax-checkpoint-tmp"]  # the save it deleted
    (warning,) = [str(w.message) for w in caught if "temporary directory" in str(w.message)]
    assert "Checkpoint step 4 lost its temporary directory" in warning
    assert "another Orbax CheckpointManager" in warning and "open_checkpoints" in warning
    assert trainer.step == 8
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["2", "6", "8"]  # step 4 lost, the next saves written, nothing left over
    manager = CheckpointManager(tmp_path / "checkpoints", read_only=True)
    restored, _ = manager.restore(trainer.checkpoint_state)
    manager.close()
    assert int(restored.step) == 8
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(trainer.state)):
        np.testing.assert_array_equal(a, b)


def test_a_full_disk_at_a_save_is_one_line_and_leaves_no_partial_directory(
    tmp_path, monkeypatch, capfd
):
    # Issue 23: 6-19 "Event loop is closed" tracebacks and absl ERROR lines, noticed one save
    # late, and the partial `*.orbax-checkpoint-tmp` left on the full disk.
    import orbax.checkpoint as ocp

    written, original = [], ocp.JsonCheckpointHandler.async_save

    async def disk_full_at_the_second_save(self, directory, *args, **kwargs):
        written.append(pathlib.Path(str(directory)))
        if len(written) == 2:  # after Orbax made the step's temporary directory
            assert any(p.name.startswith("4.orbax-checkpoint-tmp") for p in written[1].parents)
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", disk_full_at_the_second_save)
    run = tmp_path / "run"
    code = main([
        "fit", CHAR_RNN, *TINY_CHAR_RNN, "callbacks=[]", "trainer.max_steps=8",
        "trainer.checkpoint.every_steps=2", "trainer.eval_every=100", f"run_dir={run}",
    ])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2, err
    assert err.startswith("paxtrain: Saving checkpoint step 4 ") and err.count("\n") == 1, err
    assert "No space left on device" in err and "last complete checkpoint (step 2)" in err
    assert err.rstrip().endswith("Free disk space there, then resume.")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]  # no partial left
    assert {"config.yaml", "metrics.jsonl"} <= {p.name for p in run.iterdir()}


TINY_RUN = [
    *TINY_CHAR_RNN, "callbacks=[]", "trainer.max_steps=8", "trainer.eval_every=4",
    "trainer.checkpoint.every_steps=4", "trainer.plot=false",
]  # fmt: skip


def run_files(run):
    """Every file of a run directory with its bytes, but the lock (it records the pid)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".paxtrain.lock"
    }


def damage(step_dir, how):
    if how == "deleted file":
        for path in (step_dir / "state").rglob("*"):
            if path.is_file() and path.parent.name == "d":
                path.unlink()
    else:  # random bytes
        for path in (step_dir / "state").rglob("*"):
            if path.is_file() and path.parent.name == "d":
                path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


@pytest.mark.parametrize("how", ["deleted file", "random bytes"])
def test_a_corrupt_newest_checkpoint_is_one_line_and_the_resume_is_exact(tmp_path, capfd, how):
    # Issue 23: a right and bitwise exact fallback, but 47 (deleted file) or 8 tracebacks.
    import shutil

    whole, run = tmp_path / "whole", tmp_path / "run"
    assert main(["fit", CHAR_RNN, *TINY_RUN, f"run_dir={whole}"]) == 0  # steps 4 and 8
    shutil.copytree(whole, run)
    damage(run / "checkpoints" / "8", how)
    capfd.readouterr()
    assert main(["resume", str(run)]) == 0
    out, err = capfd.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("paxtrain: warning: Checkpoint step 8 in ") and "unreadable (" in line
    assert "moved it aside to" in line and "8.corrupt (its files kept); trying step 4" in line
    assert "TensorStore details" not in line
    assert "resumed from" in out and "at step 4" in out and "finished at step 8" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["4", "8", "8.corrupt"]
    for path in ("model.cell.input_to_gates.weight", "model.head.weight"):
        np.testing.assert_array_equal(
            checkpoint_array(run, 8, path), checkpoint_array(whole, 8, path), err_msg=path
        )


def checkpoint_array(run, step, path):
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(run / "checkpoints" / str(step) / "state")[path]


def test_all_unreadable_checkpoints_change_nothing_until_restart(tmp_path, capfd):
    # Issue 23: all moved aside, then the same command trained from step 0 without a word.
    run = tmp_path / "run"
    assert main(["fit", CHAR_RNN, *TINY_RUN, f"run_dir={run}"]) == 0
    for step in (4, 8):
        damage(run / "checkpoints" / str(step), "random bytes")
    before = run_files(run)
    capfd.readouterr()
    for _ in range(2):  # the same command again: the same answer, still nothing changed
        assert main(["fit", CHAR_RNN, *TINY_RUN, f"run_dir={run}"]) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "No readable checkpoint" in err and "tried step 8 (" in err and "; step 4 (" in err
        assert "Nothing was changed on disk" in err and "--restart" in err
        assert run_files(run) == before
    assert main(["resume", str(run), "--restart"]) == 0
    out, err = capfd.readouterr()
    (line,) = err.splitlines()
    assert "--restart: moved them aside (8.corrupt, 4.corrupt, their files kept)" in line
    assert "finished at step 8" in out and "resumed from" not in out
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["4", "4.corrupt", "8", "8.corrupt"]
    for name in ("4.corrupt", "8.corrupt"):  # the damaged files, byte for byte
        kept = {k.replace(name, name.split(".")[0], 1): v for k, v in run_files(run).items()
                if k.startswith(f"checkpoints/{name}/")}  # fmt: skip
        assert kept == {
            k: v for k, v in before.items() if k.startswith(f"checkpoints/{name.split('.')[0]}/")
        }


def test_resume_without_a_checkpoint_refuses_and_restart_trains_from_step_0(tmp_path, capfd):
    # Issue 23: `paxtrain resume` of a run with no checkpoint silently started from step 0.
    run = tmp_path / "run"
    assert (
        main(["fit", CHAR_RNN, *TINY_RUN, "trainer.checkpoint.enabled=false", f"run_dir={run}"])
        == 0
    )
    capfd.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "has no checkpoint to resume from" in err
    assert "trainer.checkpoint.enabled=false" in err and f"paxtrain resume {run} --restart" in err
    assert main(["resume", str(run), "trainer.checkpoint.enabled=true", "--restart"]) == 0
    out = capfd.readouterr().out
    assert "finished at step 8" in out and "resumed from" not in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["4", "8"]


def test_eval_says_which_step_of_which_run_it_evaluated(tmp_path, capfd):
    # Issue 23: `paxtrain eval` never printed which step it evaluated.
    run = tmp_path / "run"
    assert main(["fit", CHAR_RNN, *TINY_RUN, f"run_dir={run}"]) == 0
    logged = {r["step"]: r["eval/loss"] for r in read_jsonl(run) if "eval/loss" in r}
    capfd.readouterr()
    for step, expected in (("latest", 8), ("4", 4)):
        assert main(["eval", str(run), "--step", step]) == 0
        out = capfd.readouterr().out
        printed = dict(item.split("=") for item in out.split())
        assert printed["step"] == str(expected) and printed["run_dir"] == str(run)
        assert float(printed["eval/loss"]) == pytest.approx(logged[expected], rel=1e-5)


class SignalDuringCollection(RegressionData):
    """Sends SIGTERM from inside a garbage collection, as JAX's `_xla_gc_callback` runs one,
    while the trainer checks the first batch (the start-up)."""

    def train_batch(self, step):
        import gc
        import os
        import signal

        def callback(phase, info):
            if phase == "start":
                gc.callbacks.remove(callback)
                os.kill(os.getpid(), signal.SIGTERM)
                self.handled_inside = sum(range(100))  # the handler runs here, in the callback

        gc.callbacks.append(callback)
        gc.collect()
        return super().train_batch(step)


def test_a_signal_during_garbage_collection_at_start_up_is_not_lost(tmp_path):
    # Issue 23: raised from the handler inside `_xla_gc_callback`, it was printed as
    # "Exception ignored" and dropped; the run trained to its end and exited 0.
    from paxtrain.train.preemption import PreemptedBeforeTraining, before_training

    trainer = trainer_for(tmp_path / "run", 4)
    data = SignalDuringCollection()
    with before_training(), pytest.raises(PreemptedBeforeTraining) as stopped:
        trainer.fit(Regression(), data, optax.adam(0.1))
    assert data.handled_inside == 4950  # the signal came during the collection
    assert str(stopped.value).startswith("paxtrain: SIGTERM before training started")
    assert not (tmp_path / "run").exists() and trainer.step == 0


def test_a_signal_during_a_command_that_does_not_train_ends_in_exit_75(monkeypatch, capsys):
    # Recorded, not raised, by the handler: acted on once the command's work is done.
    import os
    import signal

    import paxtrain.cli.app as app

    def env_then_signalled():
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    monkeypatch.setattr(app, "_env", env_then_signalled)
    assert main(["env"]) == 75
    assert capsys.readouterr().err == (
        "paxtrain: SIGTERM before training started: nothing to save. Run the same command again.\n"
    )


class Usr2WhileChecked(CharCorpus):
    """Sends SIGUSR2 while the trainer checks the first batch (the start-up)."""

    def train_batch(self, step):
        import os
        import signal

        if not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR2)
        return super().train_batch(step)


def test_a_configured_signal_during_start_up_exits_75(tmp_path, capsys):
    # Not one of the defaults (SIGTERM, SIGINT, SIGUSR1): its default action would end the
    # process at once, as if killed.
    run = tmp_path / "run"
    code = main([
        "fit", CHAR_RNN, *TINY_RUN, f"run_dir={run}", "trainer.preemption_signals=[SIGTERM,SIGUSR2]",
        f"data._target_={__name__}.Usr2WhileChecked",
    ])  # fmt: skip
    assert code == 75
    assert capsys.readouterr().err == (
        "paxtrain: SIGUSR2 before training started: nothing to save. Run the same command again.\n"
    )
    assert not run.exists()
