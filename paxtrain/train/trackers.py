"""Experiment trackers as `Logger`s: MLflow (`pip install paxtrain[mlflow]`) and Weights & Biases
(`pip install paxtrain[wandb]`).

Each keeps one tracker run per run directory: the tracker's run id is stored in
`RUN_DIR/trackers.json` when the run starts, and a resumed run directory continues that
tracker run. The hyperparameters are logged at the start (MLflow: params and a `config.yaml`
artifact; W&B: the run's config). Both are configured the trackers' usual way as well:
`MLFLOW_TRACKING_URI`, `WANDB_MODE=offline`, `WANDB_PROJECT`...

    trainer.loggers=[tensorboard,jsonl,mlflow]
    Trainer(..., loggers=["jsonl", MLflowLogger(tracking_uri="http://127.0.0.1:5000")])
"""

from __future__ import annotations

import json
import pathlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

from paxtrain.errors import ConfigError
from paxtrain.train.sink import Logger

TRACKERS_FILE = "trackers.json"
MLFLOW_RUN_MISSING_MSG = (
    "{run_dir} continues MLflow run {run_id}, which the tracking server {uri} does not have: set "
    "MLFLOW_TRACKING_URI to the server the run started on, or delete {run_dir}/trackers.json to "
    "start a new MLflow run."
)
MLFLOW_BATCH = 100  # MLflow's limit of params (and metrics) per request


def _saved_id(run_dir: pathlib.Path, tracker: str) -> str | None:
    path = run_dir / TRACKERS_FILE
    return json.loads(path.read_text()).get(tracker) if path.is_file() else None


def _save_id(run_dir: pathlib.Path, tracker: str, run_id: str) -> None:
    path = run_dir / TRACKERS_FILE
    ids = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**ids, tracker: run_id}, indent=2) + "\n")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config values as `a.b.c` keys (list items as `a.0`), as trackers store params.

    Example:
        >>> flatten({"trainer": {"max_steps": 10}, "callbacks": [{"k": 1}]})
        {'trainer.max_steps': 10, 'callbacks.0.k': 1}
    """
    out: dict[str, Any] = {}
    items = tree.items() if isinstance(tree, Mapping) else enumerate(tree)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, list, tuple)) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


class MLflowLogger(Logger):
    """Logs to an MLflow tracking server (or a local store): params, metrics by step, and the
    hyperparameters as the artifact `config.yaml`.

    Args:
      tracking_uri: the server, e.g. "http://127.0.0.1:5000"; None: `MLFLOW_TRACKING_URI` or
        MLflow's default.
      experiment: the experiment's name; None: the config's `name`, else "paxtrain".
      run_name: None: the run directory's name.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
    ):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name

    def start(self, run_dir: pathlib.Path, hyperparams: Mapping[str, Any]) -> None:
        import mlflow
        import yaml
        from mlflow.entities import Param

        self._client = client = mlflow.MlflowClient(self.tracking_uri)
        self.run_id = _saved_id(run_dir, "mlflow")
        if self.run_id is None:
            name = self.experiment or str(hyperparams.get("name") or "paxtrain")
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else client.create_experiment(name)
            run = client.create_run(experiment_id, run_name=self.run_name or run_dir.name)
            self.run_id = run.info.run_id
            _save_id(run_dir, "mlflow", self.run_id)
        else:
            try:
                client.update_run(self.run_id, status="RUNNING")
            except mlflow.exceptions.MlflowException:
                raise ConfigError(
                    MLFLOW_RUN_MISSING_MSG.format(
                        run_id=self.run_id, uri=client.tracking_uri, run_dir=run_dir
                    )
                ) from None
        # MLflow refuses to change a logged param: a resume with overrides adds only new keys.
        logged = client.get_run(self.run_id).data.params
        params = [
            Param(key, str(value)[:6000])
            for key, value in flatten(hyperparams).items()
            if key not in logged
        ]
        for i in range(0, len(params), MLFLOW_BATCH):
            client.log_batch(self.run_id, params=params[i : i + MLFLOW_BATCH])
        text = yaml.safe_dump(json.loads(json.dumps(hyperparams, default=str)), sort_keys=False)
        client.log_text(self.run_id, text, "config.yaml")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in scalars.items()]
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self._client.log_batch(self.run_id, metrics=metrics[i : i + MLFLOW_BATCH])

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


class WandbLogger(Logger):
    """Logs to Weights & Biases: the hyperparameters as the run's config, metrics by step.

    Args:
      project: None: `WANDB_PROJECT`, else the config's `name`, else "paxtrain".
      mode: "online", "offline" (files under `RUN_DIR/wandb/`, `wandb sync` uploads them) or
        "disabled"; None: `WANDB_MODE`, else W&B's default.
      entity: the W&B team or user; None: W&B's default.
    """

    def __init__(
        self, project: str | None = None, mode: str | None = None, entity: str | None = None
    ):
        self.project, self.mode, self.entity = project, mode, entity

    def start(self, run_dir: pathlib.Path, hyperparams: Mapping[str, Any]) -> None:
        import os

        import wandb

        run_id = _saved_id(run_dir, "wandb") or uuid.uuid4().hex[:12]
        project = self.project or os.environ.get("WANDB_PROJECT")
        self._run = wandb.init(
            project=project or str(hyperparams.get("name") or "paxtrain"),
            entity=self.entity,
            mode=self.mode,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            name=run_dir.name,
            config=dict(hyperparams),
        )
        _save_id(run_dir, "wandb", run_id)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._run.log({key: float(value) for key, value in scalars.items()}, step=step)

    def close(self) -> None:
        self._run.finish()
