"""Exact resume, preemption and faults, end to end through `paxtrain` in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_support import CHAR_RNN, ROOT, TINY_CHAR_RNN, run_paxtrain

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
                trainer.checkpoints.wait()
            os.kill(os.getpid(), self.signal)


class SignalAgainAtTheEnd(Hook):
    """A second signal while the end-of-training hooks run (before the final save)."""

    def __init__(self, signal_name="SIGINT"):
        self.signal = getattr(signal, signal_name)

    def on_train_end(self, trainer):
        os.kill(os.getpid(), self.signal)


class SignalWhileBuilt(CharCorpus):
    """Sends a signal to this process while the data is being built (start-up)."""

    def __init__(self, signal_name="SIGTERM", **kwargs):
        os.kill(os.getpid(), getattr(signal, signal_name))
        super().__init__(**kwargs)


class WaitForFile(Hook):
    """Holds the run at its start until `path` exists (or `timeout` seconds passed)."""

    def __init__(self, path, timeout=120):
        self.path, self.timeout = path, timeout

    def on_train_start(self, trainer):
        import pathlib
        import time

        deadline = time.monotonic() + self.timeout
        while not pathlib.Path(self.path).exists() and time.monotonic() < deadline:
            time.sleep(0.1)


class SignalDuringCollection(CharCorpus):
    """Sends SIGTERM from inside a forced garbage collection (a gc callback, where JAX's
    `_xla_gc_callback` runs) while the data is being built."""

    def __init__(self, **kwargs):
        import gc

        def callback(phase, info):
            if phase == "start":
                gc.callbacks.remove(callback)
                os.kill(os.getpid(), signal.SIGTERM)
                sum(range(100))  # the handler runs here, inside the collection

        gc.callbacks.append(callback)
        gc.collect()
        super().__init__(**kwargs)


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


@pytest.mark.slow  # two CLI processes; the matrix checks bitwise resumes in-process
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


@pytest.mark.slow  # compiles with no cache on purpose
def test_sigterm_during_compile_finishes_the_first_step_and_saves(workdir):
    run = workdir / "compile"
    result = fit(
        workdir, run, "trainer.max_steps=8", "callbacks=[{_target_:faults.SignalAt,delay:0.2}]",
        "trainer.compile_cache=null",  # a cached program would compile before the signal
    )  # fmt: skip
    assert result.returncode == PREEMPTED, result.stderr[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1"]


@pytest.mark.slow  # a CLI process; SIGTERM during training stays in the default step
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


# Three `paxtrain` runs end to end; `test_checkpoint_finetune.py` checks the loading and freezing in-process.
@pytest.mark.slow
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
    # Resumed and evaluated from its own checkpoints once the run it started from is gone.
    source.rename(workdir / "A_gone")
    try:
        resumed = paxtrain(workdir, "resume", str(run), "trainer.max_steps=6")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        evaluated = paxtrain(workdir, "eval", str(run))
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    finally:
        (workdir / "A_gone").rename(source)
    resumed_arrays = checkpoint_arrays(run, 6)
    np.testing.assert_array_equal(
        resumed_arrays["model.embed.weight"], before["model.embed.weight"]
    )


@pytest.mark.slow
def test_a_second_ctrl_c_waits_for_the_save_and_the_lines_agree_on_the_step(workdir):
    run = workdir / "ctrl_c"
    result = fit(
        workdir, run, "trainer.max_steps=8", "trainer.plot=true",
        "callbacks=[{_target_:faults.SignalAt,signal_name:SIGINT,step:3},"
        "{_target_:faults.SignalAgainAtTheEnd}]",
    )  # fmt: skip
    assert result.returncode == PREEMPTED, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    out = result.stdout
    assert "SIGINT: stopping after this step and saving a checkpoint; press Ctrl-C" in out
    assert "SIGINT again: exiting as soon as the checkpoint is saved" in out
    last = out.strip().splitlines()[-1]
    assert (
        last
        == f"paxtrain: preempted by SIGINT at step 3; checkpoint saved. Continue with: paxtrain resume {run}"
    )
    assert "finished at step" not in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3"]
    assert not (run / "curves.png").exists()  # the plot comes after the save, and was skipped


@pytest.mark.parametrize(
    "name", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow),
             pytest.param("SIGUSR1", marks=pytest.mark.slow)],
)  # fmt: skip
def test_a_signal_during_start_up_exits_75_with_nothing_to_save(workdir, name):
    run = workdir / f"startup_{name}"
    result = fit(workdir, run, "data._target_=faults.SignalWhileBuilt", f"+data.signal_name={name}")
    assert result.returncode == PREEMPTED, result.stderr[-2000:]
    assert (
        result.stderr
        == f"paxtrain: {name} before training started: nothing to save. Run the same command again.\n"
    )
    assert not run.exists()


@pytest.mark.slow
def test_resume_keeps_the_schedule_and_a_lower_max_steps_has_nothing_to_train(workdir):
    run = workdir / "horizon"
    schedule = [
        "optimizer.learning_rate.warmup_steps=1", "optimizer.learning_rate.peak_value=0.01"
    ]  # fmt: skip
    assert fit(workdir, run, "trainer.max_steps=4", *schedule).returncode == 0
    longer = paxtrain(workdir, "resume", str(run), "trainer.max_steps=8")
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert (
        "keeps its horizon of 4 steps" in longer.stdout and "optimizer.horizon=8" in longer.stdout
    )
    lrs = {
        r["step"]: r["train/learning_rate"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "train/learning_rate" in r
    }
    assert lrs[6] == lrs[8] == 0.0  # the schedule over 4 steps ended at 0: no restart
    shorter = paxtrain(workdir, "resume", str(run), "trainer.max_steps=2")
    assert shorter.returncode == 0, shorter.stderr[-2000:]
    assert (
        "nothing to train: the checkpoint is at step 8 and trainer.max_steps is 2" in shorter.stdout
    )
    assert "step 8/2" not in shorter.stdout and "finished at step" not in shorter.stdout


TMPFS_SIZE = "420k"  # room for the run's files and a few of its checkpoints


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as the run directory")
def test_a_full_disk_names_the_failed_save_and_the_run_resumes_once_space_is_freed(workdir):
    disk = workdir / "small_disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(disk)]
    )
    if mounted.returncode:
        pytest.skip("mount is not permitted here")
    try:
        run = disk / "run"
        full = fit(
            workdir, run, "trainer.max_steps=20", "trainer.checkpoint.every_steps=2",
            "trainer.checkpoint.keep_last=20", "trainer.eval_every=100",
        )  # fmt: skip
        assert full.returncode == 2, full.stderr[-3000:]
        (line,) = [x for x in full.stderr.splitlines() if x.startswith("paxtrain:")]
        good = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
        last = f"step {good[-1]}" if good else "none yet"
        assert "No space left on device" in line, line
        assert f"the last complete checkpoint ({last}) is intact" in line, line
        if "Saving checkpoint step" in line:  # else the logs hit the full disk first
            failed = int(line.split("Saving checkpoint step ")[1].split()[0])
            assert failed not in good and (not good or good[-1] < failed), line
        else:
            assert "Writing the run's files failed" in line, line
        # Orbax's and tensorstore's threads still finishing the failed save may log their own
        # tracebacks (timing-dependent, some from C++): the run's own report is the one line.
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        resumed = paxtrain(workdir, "resume", str(run))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert not good or f"at step {good[-1]}" in resumed.stdout
        assert "finished at step 20" in resumed.stdout
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_finishes(workdir):
    run = workdir / "corrupt"
    assert fit(workdir, run, "trainer.max_steps=8").returncode == 0
    (run / "checkpoints" / "8" / "meta" / "metadata").write_text("{not json")
    again = fit(workdir, run, "trainer.max_steps=8")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert "step 8" in again.stderr and "moved it aside" in again.stderr
    assert "at step 4" in again.stdout and "finished at step 8" in again.stdout
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["4", "8", "8.corrupt"]  # saved again; the damaged one kept


@pytest.mark.slow
def test_a_second_fit_on_a_run_directory_in_use_is_refused_and_the_first_finishes(workdir):
    run, go_on = workdir / "two_writers", workdir / "two_writers_go_on"
    env = {**os.environ, "PYTHONPATH": f"{workdir}:{ROOT}", "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(
        [sys.executable, "-m", "paxtrain", "fit", CHAR_RNN, *TINY, f"run_dir={run}",
         "trainer.max_steps=8", f"callbacks=[{{_target_:faults.WaitForFile,path:'{go_on}'}}]"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while not (run / ".paxtrain.lock").exists() and first.poll() is None:
            time.sleep(0.2)  # the first run holds the lock and waits at its start
        second = fit(workdir, run, "trainer.max_steps=8")
    finally:
        go_on.touch()
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr[-2000:]
    assert f"run_dir={run} is in use by another paxtrain run" in second.stderr
    assert f'"pid": {first.pid}' in second.stderr
    assert first.returncode == 0, err[-2000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], k) for r in records for k in r if k != "step"]
    assert len(logged) == len(set(logged)) and not any("repeated" in r for r in records)


STARTUP_DELAYS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # seconds after the first line


def fit_signalled_after_its_first_line(workdir, run, delay, *args):
    """`paxtrain ARGS`, sent SIGTERM `delay` seconds after it printed its run directory (the
    data is built; the state, the compilation and the restore come next)."""
    env = {**os.environ, "PYTHONPATH": f"{workdir}:{ROOT}", "JAX_PLATFORMS": "cpu",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "paxtrain", *args], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = ""
    while not first.startswith("paxtrain: run directory") and process.poll() is None:
        first = process.stdout.readline()
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    return process.returncode, first + out, err


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True], ids=["fit", "resume"])
def test_sigterm_at_every_moment_of_start_up_exits_75_with_its_line(workdir, resume):
    # Issue 23: a SIGTERM 0.25 s after the first line was raised inside JAX's gc callback and
    # lost: the run trained to its end and exited 0.
    for delay in STARTUP_DELAYS:
        run = workdir / f"sweep_{resume}_{delay}"
        if resume:
            assert fit(workdir, run, "trainer.max_steps=4").returncode == 0
        args = ["resume", str(run), "optimizer.horizon=400"] if resume else [
            "fit", CHAR_RNN, *TINY, f"run_dir={run}"
        ]  # fmt: skip
        code, out, err = fit_signalled_after_its_first_line(
            workdir, run, delay, *args, "trainer.max_steps=400"
        )
        assert code == PREEMPTED, (delay, out[-2000:], err[-2000:])
        assert "Traceback" not in err and "Exception ignored" not in err, (delay, err[-2000:])
        before = (
            err
            == "paxtrain: SIGTERM before training started: nothing to save. Run the same command again.\n"
        )
        stopped = "paxtrain: preempted by SIGTERM at step" in out
        assert before != stopped, (delay, out[-2000:], err[-2000:])  # one of the two lines
        if resume:  # the run's checkpoint is never lost
            steps = [int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
            assert max(steps) >= 4, steps


@pytest.mark.slow
def test_sigterm_during_a_garbage_collection_at_start_up_exits_75(workdir):
    run = workdir / "startup_gc"
    result = fit(workdir, run, "data._target_=faults.SignalDuringCollection")
    assert result.returncode == PREEMPTED, result.stderr[-2000:]
    assert (
        result.stderr
        == "paxtrain: SIGTERM before training started: nothing to save. Run the same command again.\n"
    )
    assert not run.exists()
