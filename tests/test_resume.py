"""Exact resume, preemption and faults, end to end through `paxtrain` in subprocesses."""

import json
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_support import CHAR_RNN, TINY_CHAR_RNN, run_paxtrain

PREEMPTED = 75
TINY = [
    *TINY_CHAR_RNN,
    "trainer.log_every=2",
    "trainer.eval_every=4",
    "trainer.plot=false",
    "trainer.checkpoint.every_steps=4",
    "callbacks=[]",
]

FAULTS = '''
import os
import signal
import threading

from paxtrain.data import CharCorpus
from paxtrain.train.hooks import Hook


class SignalAt(Hook):
    """Sends a signal to this process at the start of training or after a given step."""

    def __init__(self, signal_name="SIGTERM", step=None, wait_for_checkpoints=False, delay=None):
        self.signal = getattr(signal, signal_name)
        self.step, self.wait, self.delay = step, wait_for_checkpoints, delay

    def on_train_start(self, trainer):
        if self.delay is not None:  # lands while the first step is being compiled
            threading.Timer(self.delay, os.kill, (os.getpid(), self.signal)).start()

    def on_step(self, trainer, metrics):
        if trainer.step == self.step:
            if self.wait:
                trainer.checkpointing.manager.wait()
            os.kill(os.getpid(), self.signal)


class SignalDuringEval(CharCorpus):
    """Sends SIGTERM in the middle of the first evaluation."""

    def eval_batches(self):
        for i, batch in enumerate(super().eval_batches()):
            if i == 1 and not getattr(self, "sent", False):
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume")
    (path / "faults.py").write_text(textwrap.dedent(FAULTS))
    return path


def paxtrain(workdir, *args):
    return run_paxtrain(*args, cwd=workdir, pythonpath=(workdir,))


def fit(workdir, run_dir, *overrides):
    return paxtrain(workdir, "fit", CHAR_RNN, *TINY, f"run_dir={run_dir}", *overrides)


def checkpoint_arrays(run_dir, step):
    return ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / str(step) / "state")


def last_losses_by_step(run_dir):
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            losses[record["step"]] = record["train/loss"]
    return losses


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_exact(workdir):
    a, b = workdir / "A", workdir / "B"
    assert fit(workdir, a, "trainer.max_steps=8").returncode == 0
    killed = fit(
        workdir, b, "trainer.max_steps=8",
        "callbacks=[{_target_:faults.SignalAt,signal_name:SIGKILL,step:6,wait_for_checkpoints:true}]",
    )  # fmt: skip
    assert killed.returncode == -9
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["4"]
    resumed = fit(workdir, b, "trainer.max_steps=8")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "at step 4" in resumed.stdout

    final_a, final_b = checkpoint_arrays(a, 8), checkpoint_arrays(b, 8)
    assert final_a.keys() == final_b.keys()
    for path in final_a:
        np.testing.assert_array_equal(final_a[path], final_b[path], err_msg=path)
    losses_a, losses_b = last_losses_by_step(a), last_losses_by_step(b)
    assert [s for s in losses_b if s > 4] == [6, 8]
    assert all(losses_a[s] == losses_b[s] for s in (6, 8))


def test_sigterm_during_training_saves_and_exits_75_then_resume_finishes(workdir):
    run = workdir / "term"
    result = fit(
        workdir, run, "trainer.max_steps=8", "trainer.checkpoint.every_steps=100",
        "callbacks=[{_target_:faults.SignalAt,step:3}]",
    )  # fmt: skip
    assert result.returncode == PREEMPTED, result.stderr[-2000:]
    assert "preempted by SIGTERM at step 3" in result.stdout
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3"]
    assert 2 in last_losses_by_step(run)  # logs flushed
    resumed = paxtrain(workdir, "resume", str(run), "callbacks=[]")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 3" in resumed.stdout and "finished at step 8" in resumed.stdout


def test_sigterm_during_compile_finishes_the_first_step_and_saves(workdir):
    run = workdir / "compile"
    result = fit(
        workdir, run, "trainer.max_steps=8", "callbacks=[{_target_:faults.SignalAt,delay:0.2}]"
    )
    assert result.returncode == PREEMPTED, result.stderr[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1"]


def test_sigterm_during_eval_stops_the_eval_and_saves(workdir):
    run = workdir / "eval"
    result = fit(
        workdir, run, "trainer.max_steps=8", "trainer.eval_every=2",
        "data._target_=faults.SignalDuringEval",
    )  # fmt: skip
    assert result.returncode == PREEMPTED, result.stderr[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("eval/loss" in r for r in records)  # the interrupted eval logged nothing


def test_resume_with_a_different_model_names_the_path_and_shapes(workdir):
    run = workdir / "A"  # finished by the exact-resume test, or made here
    if not (run / "checkpoints").exists():
        assert fit(workdir, run, "trainer.max_steps=8").returncode == 0
    result = paxtrain(workdir, "resume", str(run), "model.hidden_dim=32", "trainer.max_steps=12")
    assert result.returncode == 2
    assert "at `model.cell.input_to_gates.weight`" in result.stderr
    assert "checkpoint has shape" in result.stderr and "Traceback" not in result.stderr


def test_eval_command_reports_checkpoint_metrics(workdir):
    run = workdir / "A"
    if not (run / "checkpoints").exists():
        assert fit(workdir, run, "trainer.max_steps=8").returncode == 0
    result = paxtrain(workdir, "eval", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r["eval/loss"] for r in logged if "eval/loss" in r][-1]
    reported = float(result.stdout.split("eval/loss=")[1].split()[0])
    assert reported == pytest.approx(final_eval, rel=1e-5)


def test_fine_tune_from_a_run_with_a_frozen_embedding(workdir):
    source = workdir / "A"
    if not (source / "checkpoints").exists():
        assert fit(workdir, source, "trainer.max_steps=8").returncode == 0
    run = workdir / "finetune"
    result = fit(
        workdir, run, "trainer.max_steps=4", f"init_from={source}", "freeze=['^embed$']",
        "trainer.checkpoint.every_steps=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "embed: Embed(vocab_size=98, embed_dim=8) [frozen]" in result.stdout
    before, after = checkpoint_arrays(source, 8), checkpoint_arrays(run, 4)
    np.testing.assert_array_equal(after["model.embed.weight"], before["model.embed.weight"])
    assert not np.array_equal(after["model.head.weight"], before["model.head.weight"])
