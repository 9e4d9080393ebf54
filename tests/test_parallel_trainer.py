"""The parallel layouts through the config, the CLI and checkpoints.

Every run is a subprocess with its own number of virtual CPU devices: `paxtrain fit ... mesh.*`
on 8 devices against one device, two `paxtrain fit` processes joined over localhost, and
checkpoints saved on one layout and resumed on another (`parallel_scripts/topology.py`:
8 -> 1, 8 -> 4, 1 -> 8).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_support import CHAR_RNN, ROOT, TINY_CHAR_RNN
from conftest import cpu_env
from jax.sharding import AbstractMesh, PartitionSpec
from test_parallel import SCRIPTS, last_json_line, run_two_processes, start_two_processes

from paxtrain import parallel
from paxtrain.cli.app import main
from paxtrain.cli.build import build_trainer
from paxtrain.config.composition import compose
from paxtrain.train.logger import read_metrics

STEPS, MORE_STEPS = 4, 6
# Batch and eval batch divisible by 8 devices; no sample at the end, to keep it short.
CLI_RUN = [*TINY_CHAR_RNN, "data.batch_size=8", "callbacks=[]", "trainer.plot=false"]
CLI_RUN += [f"trainer.max_steps={STEPS}", "trainer.log_every=1", "trainer.eval_every=2"]


def run(args: list[str], devices: int) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=cpu_env(devices, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def topology(mode: str, run_dir, steps: int, devices: int, *overrides: str) -> dict:
    script = os.path.join(SCRIPTS, "topology.py")
    return last_json_line(run([script, mode, str(run_dir), str(steps), *overrides], devices).stdout)


def fit(run_dir, devices: int, *overrides: str) -> list[dict]:
    run(["-m", "paxtrain", "fit", CHAR_RNN, *CLI_RUN, f"run_dir={run_dir}", *overrides], devices)
    return read_metrics(run_dir)


def series(records: list[dict], key: str) -> list[float]:
    return [r[key] for r in records if key in r]


# ------------------------------------------------------------------ paxtrain fit with a mesh
@pytest.fixture(scope="module")
def one_device_fit(tmp_path_factory):
    return fit(tmp_path_factory.mktemp("one") / "run", 1)


# FSDP through the Trainer: in the checkpoint tests below. pmap on 8 devices is also checked in
# the default step by `test_parallel.py`'s strategies; through the CLI here in the slow one.
@pytest.mark.parametrize(
    "layout",
    [pytest.param(["mesh.data=8"], marks=pytest.mark.slow),
     pytest.param(["parallel.strategy=pmap"], marks=pytest.mark.slow)],
    ids=["data8", "pmap"],
)
def test_fit_on_8_devices_matches_one_device(tmp_path, one_device_fit, layout):
    records = fit(tmp_path / "run", 8, *layout)
    for key in ("train/loss", "eval/loss"):
        np.testing.assert_allclose(series(records, key), series(one_device_fit, key), rtol=2e-5)
    assert len(series(records, "train/loss")) == STEPS
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config_hash"]


@pytest.mark.parametrize(
    ("overrides", "devices", "message"),
    [
        (["data.batch_size=6", "mesh.data=4"], 4, "not divisible by the data-parallel size 4"),
        # The LSTM has no attention or MLP block for the default rules: half the devices would
        # repeat the other half's work.
        (["mesh.data=1", "mesh.tensor=2"], 2, "no tensor-parallel rule matches a parameter"),
    ],
    ids=["batch_not_divisible", "tensor_axis_unused"],
)
def test_a_layout_that_cannot_work_is_one_clear_error(tmp_path, overrides, devices, message):
    done = subprocess.run(
        [sys.executable, "-m", "paxtrain", "fit", CHAR_RNN, *CLI_RUN, *overrides]
        + [f"run_dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=cpu_env(devices, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_tensor_rules_come_from_the_config(tmp_path):
    rule = r"cell\.input_to_gates\.weight$"
    override = f'parallel.tensor_rules=[["{rule}", [null, tensor]]]'
    cfg = compose(CHAR_RNN, [*CLI_RUN, override, f"run_dir={tmp_path}"])
    trainer = build_trainer(cfg, tmp_path)[0]
    assert parallel.as_rules(trainer.layout.tensor_rules) == ((rule, PartitionSpec(None, "tensor")),)
    mesh = AbstractMesh((1, 1, 2), parallel.AXES)
    path = ".model.cell.input_to_gates.weight"
    spec = parallel.partition_spec(path, (8, 64), mesh, parallel.as_rules(trainer.layout.tensor_rules))
    assert spec == PartitionSpec(None, "tensor")


def test_mesh_that_does_not_fit_the_devices_is_one_clear_error(tmp_path, capsys):
    # In this process, on its one device.
    code = main(["fit", CHAR_RNN, *CLI_RUN, f"run_dir={tmp_path / 'run'}", "mesh.data=3"])
    assert code == 2
    assert "needs 3 devices, but 1 are available" in capsys.readouterr().err


def two_process_fit(run_dir, one_device_fit, *layout: str) -> list[dict]:
    """`paxtrain fit` on two processes with `layout`, checked against one device: the losses,
    one writer, and checkpoints 2 and 4 written collectively. Returns the metrics records."""
    command = [sys.executable, "-m", "paxtrain", "fit", CHAR_RNN, *CLI_RUN, f"run_dir={run_dir}"]
    command += [*layout, "trainer.checkpoint.every_steps=2"]
    # The recipes importable wherever pytest runs.
    outputs = run_two_processes(command, PYTHONPATH=str(ROOT))
    assert "paxtrain: finished at step 4" in outputs[0]
    assert "paxtrain:" not in outputs[1]  # process 1 prints nothing of its own
    records = read_metrics(run_dir)  # one writer: each step once
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, STEPS + 1))
    for key in ("train/loss", "eval/loss"):
        np.testing.assert_allclose(series(records, key), series(one_device_fit, key), rtol=2e-5)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4"]
    for step in ("2", "4"):  # a fingerprint of every array, those split over processes too
        step_dir = run_dir / "checkpoints" / step
        arrays = json.loads((step_dir / "state" / "_METADATA").read_text())["tree_metadata"]
        record = json.loads((step_dir / "meta" / "metadata").read_text())
        assert len(record["fingerprints"]) == len(arrays)
    return records


def assert_one_process_evaluates_the_last_checkpoint(run_dir, records):
    done = run(["-m", "paxtrain", "eval", str(run_dir), "mesh.data=1", "mesh.fsdp=1"], 1)
    printed = dict(item.split("=") for item in done.stdout.split())
    # One device sums in another order than four: equal to float32 rounding.
    np.testing.assert_allclose(
        float(printed["eval/loss"]), series(records, "eval/loss")[-1], rtol=1e-5
    )


@pytest.mark.slow
def test_two_processes_train_like_one_device_and_only_process_0_writes(tmp_path, one_device_fit):
    run_dir = tmp_path / "run"
    records = two_process_fit(run_dir, one_device_fit, "mesh.data=2", "mesh.fsdp=2")
    assert_one_process_evaluates_the_last_checkpoint(run_dir, records)


@pytest.mark.slow
def test_pmap_on_two_processes_saves_resumes_and_restores_on_one(tmp_path, one_device_fit):
    # Before: the first save failed ("Cannot serialize host local jax.Array"), the state handed
    # to Orbax being each process's own `x[0]`; then runs hung now and then, reading the state
    # with `x[0]` (see `test_parallel.py::test_two_processes_train_like_one_device`).
    run_dir = tmp_path / "run"
    pmap = ["parallel.strategy=pmap"]
    records = two_process_fit(run_dir, one_device_fit, *pmap)
    # Resumed by both processes from step 2, steps 3 and 4 are trained again alike.
    shutil.rmtree(run_dir / "checkpoints" / "4")
    command = [sys.executable, "-m", "paxtrain", "resume", str(run_dir)]
    outputs = run_two_processes(command, PYTHONPATH=str(ROOT))
    assert "resumed from" in outputs[0] and "at step 2" in outputs[0]
    again = {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}
    first = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    np.testing.assert_allclose([again[3], again[4]], [first[3], first[4]], rtol=1e-6)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4"]
    assert_one_process_evaluates_the_last_checkpoint(run_dir, records)


def losses_by_step(run_dir) -> dict[int, float]:
    """Train loss of each step, the last record of a step winning (a resumed run's)."""
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


@pytest.mark.slow
def test_a_sigterm_to_one_process_stops_both_after_the_same_step(tmp_path):
    # Before, only the signalled process stopped, and the collective final save hung.
    # Long enough that the signal, sent after 3 logged steps, lands well before the end.
    long_run = [*CLI_RUN, "trainer.max_steps=200", "trainer.eval_every=null"]
    long_run += ["trainer.checkpoint.every_steps=1000"]
    fit = [sys.executable, "-m", "paxtrain", "fit", CHAR_RNN, *long_run]
    reference = tmp_path / "reference"
    run_two_processes([*fit, f"run_dir={reference}"], PYTHONPATH=str(ROOT))
    run_dir = tmp_path / "run"
    procs = start_two_processes([*fit, f"run_dir={run_dir}"], PYTHONPATH=str(ROOT))
    deadline = time.monotonic() + 240
    while len(losses_by_step(run_dir) if (run_dir / "metrics.jsonl").exists() else {}) < 3:
        assert time.monotonic() < deadline and procs[0].poll() is None
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [75, 75], outputs[1][1][-3000:]
    stopped = max(losses_by_step(run_dir))
    assert 3 <= stopped < 200
    # One checkpoint, saved by both processes at the step both stopped after.
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [str(stopped)]
    assert "preempted by a preemption notice" in outputs[0][0]
    # Resumed, the run goes on exactly as the one never interrupted.
    run_two_processes(
        [sys.executable, "-m", "paxtrain", "resume", str(run_dir)], PYTHONPATH=str(ROOT)
    )
    assert losses_by_step(run_dir) == losses_by_step(reference)


@pytest.mark.slow
def test_saves_every_n_seconds_are_taken_by_both_processes_at_the_same_steps(tmp_path):
    # Before, each process timed its own saves: one entered the collective save while the
    # other trained on, and both hung (two runs in three).
    timed = [*CLI_RUN, "trainer.max_steps=40", "trainer.eval_every=null"]
    timed += ["trainer.checkpoint.every_steps=null", "trainer.checkpoint.every_seconds=0.2"]
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "paxtrain", "fit", CHAR_RNN, *timed, f"run_dir={run_dir}"]
    outputs = run_two_processes(command, PYTHONPATH=str(ROOT))
    assert "paxtrain: finished at step 40" in outputs[0]
    # The first step (compiling) takes longer than 0.2 s: saved then, and at the end.
    saved = sorted(int(path.name) for path in (run_dir / "checkpoints").iterdir())
    assert saved[-1] == 40 and len(saved) >= 2


# ------------------------------------------------------- checkpoints across device layouts
@pytest.fixture(scope="module")
def saved_on_8(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("saved8") / "run"
    return run_dir, topology("save", run_dir, STEPS, 8, "mesh.data=1", "mesh.fsdp=8")


@pytest.fixture(scope="module")
def saved_on_1(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("saved1") / "run"
    return run_dir, topology("save", run_dir, STEPS, 1)


def resume_copy(saved, tmp_path, devices: int, *overrides: str) -> dict:
    run_dir = tmp_path / "run"
    shutil.copytree(saved[0], run_dir)
    return topology("restore", run_dir, MORE_STEPS, devices, *overrides)


def test_saved_state_really_was_split_over_8_devices(saved_on_8):
    layout = saved_on_8[1]["layout"]
    assert layout == {"devices": 8, "shard_shape": [64, 32], "shape": [64, 256]}


@pytest.mark.parametrize(
    ("source", "devices", "overrides", "shard_shape"),
    [
        ("saved_on_8", 1, [], [64, 256]),
        # One layout change in the default step, the others in the slow one.
        pytest.param(
            "saved_on_8", 4, ["mesh.data=2", "mesh.fsdp=2"], [64, 128], marks=pytest.mark.slow
        ),
        pytest.param(
            "saved_on_1", 8, ["mesh.data=2", "mesh.fsdp=4"], [64, 64], marks=pytest.mark.slow
        ),
    ],
    ids=["8to1", "8to4", "1to8"],
)
def test_checkpoint_restores_on_another_layout_and_training_goes_on(
    request, tmp_path, source, devices, overrides, shard_shape
):
    saved = request.getfixturevalue(source)
    result = resume_copy(saved, tmp_path, devices, *overrides)
    assert result["restored_equal"]  # every array of the state, bitwise
    assert result["layout"]["devices"] == devices
    assert result["layout"]["shard_shape"] == shard_shape
    assert result["step"] == MORE_STEPS
    losses = result["losses"]
    assert [int(s) for s in losses] == list(range(1, MORE_STEPS + 1))
    # The steps before the save are the saved run's; the ones after continue from it.
    assert [losses[str(s)] for s in range(1, STEPS + 1)] == list(saved[1]["losses"].values())
    assert all(np.isfinite(losses[str(s)]) for s in range(STEPS + 1, MORE_STEPS + 1))


@pytest.mark.slow
def test_resumed_runs_continue_alike_on_every_layout(saved_on_8, tmp_path):
    on_1 = resume_copy(saved_on_8, tmp_path / "a", 1)
    on_8 = resume_copy(saved_on_8, tmp_path / "b", 8, "mesh.data=8")
    after = [str(s) for s in range(STEPS + 1, MORE_STEPS + 1)]
    np.testing.assert_allclose(
        [on_8["losses"][s] for s in after], [on_1["losses"][s] for s in after], rtol=2e-5
    )
