"""MLflow against a real tracking server on localhost (SQLite backend), W&B in offline mode: a
`paxtrain fit` logs the config and the metrics, and a resume continues the same tracker run.

Slow (a server start and four tiny runs), and skipped where the `mlflow` / `wandb` extras are
not installed (`.ci/run` installs them for its slow step).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from cli_support import CHAR_RNN, ROOT, TINY_CHAR_RNN

pytestmark = pytest.mark.slow

TINY = [
    *TINY_CHAR_RNN, "trainer.log_every=2", "trainer.eval_every=null", "trainer.plot=false",
    "callbacks=[]", "trainer.checkpoint.every_steps=2",
]  # fmt: skip


def paxtrain(*args, env):
    result = subprocess.run(
        [sys.executable, "-m", "paxtrain", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def jsonl_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]


def artifact_text(client, run_id, name, directory):
    directory.mkdir()
    return pathlib.Path(client.download_artifacts(run_id, name, str(directory))).read_text()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (root / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the MLflow server did not start in 180 s"
                time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=30)


def test_mlflow_run_holds_params_metrics_and_config_and_a_resume_continues_it(
    mlflow_server, tmp_path
):
    import mlflow

    run_dir = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    loggers = "trainer.loggers=[jsonl,mlflow]"
    paxtrain("fit", CHAR_RNN, *TINY, "trainer.max_steps=4", loggers, f"run_dir={run_dir}", env=env)
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "char_rnn"
    params = run.data.params
    assert params["trainer.max_steps"] == "4" and params["model.hidden_dim"] == "16"
    assert params["optimizer._target_"] == "optax.adamw"
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    assert dict(history) == pytest.approx(dict(jsonl_losses(run_dir)))
    config = artifact_text(client, run_id, "config.yaml", tmp_path / "a")
    assert "max_steps: 4" in config and "hidden_dim: 16" in config

    paxtrain("resume", str(run_dir), "trainer.max_steps=6", "optimizer.horizon=6", env=env)
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"] == run_id
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    assert [step for step, _ in history] == [2, 4, 6]
    assert dict(history) == pytest.approx(dict(jsonl_losses(run_dir)))
    assert "max_steps: 6" in artifact_text(client, run_id, "config.yaml", tmp_path / "b")
    assert len(client.search_runs([run.info.experiment_id])) == 1


def wandb_records(path: pathlib.Path):
    """The protobuf records of a W&B offline `.wandb` file (a LevelDB-style log of 32 KiB blocks
    after a 7-byte header; a record may span blocks as FIRST/MIDDLE/LAST chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        length, kind = (
            int.from_bytes(data[position + 4 : position + 6], "little"),
            data[position + 6],
        )
        if left < 7 or kind == 0:  # block trailer or zero padding
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(run_dir: pathlib.Path):
    """(run ids, config, [(step, train/loss)]) read back from every offline run of a run dir."""
    ids, config, losses = set(), {}, []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                if "train/loss" in items:
                    losses.append((int(items["_step"]), json.loads(items["train/loss"])))
    return ids, config, losses


def test_wandb_offline_run_holds_config_and_metrics_and_a_resume_continues_it(tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    loggers = "trainer.loggers=[jsonl,wandb]"
    paxtrain("fit", CHAR_RNN, *TINY, "trainer.max_steps=4", loggers, f"run_dir={run_dir}", env=env)
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    ids, config, losses = wandb_run(run_dir)
    assert ids == {run_id}
    assert config["trainer"]["max_steps"] == 4 and config["name"] == "char_rnn"
    assert dict(losses) == pytest.approx(dict(jsonl_losses(run_dir)))

    paxtrain("resume", str(run_dir), "trainer.max_steps=6", "optimizer.horizon=6", env=env)
    ids, config, losses = wandb_run(run_dir)
    assert ids == {run_id}  # the same W&B run, continued
    assert [step for step, _ in losses] == [2, 4, 6]
    assert dict(losses) == pytest.approx(dict(jsonl_losses(run_dir)))


def test_mlflow_resume_on_another_server_is_one_clear_error(tmp_path):
    pytest.importorskip("mlflow")
    from paxtrain.errors import ConfigError
    from paxtrain.train.trackers import TRACKERS_FILE, MLflowLogger

    (tmp_path / TRACKERS_FILE).write_text(json.dumps({"mlflow": "0" * 32}))
    logger = MLflowLogger(tracking_uri=f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(ConfigError, match=r"does not have: set MLFLOW_TRACKING_URI"):
        logger.start(tmp_path, {})
