"""The metrics sinks as an interface: `Trainer(loggers=[...])` and `trainer.loggers` in a config."""

import json

import optax
import pytest
from conftest import Regression, RegressionData

import paxtrain as pax
from paxtrain.cli.build import build_trainer
from paxtrain.config.composition import compose
from paxtrain.errors import ConfigError
from paxtrain.train import Trainer, default_hooks
from paxtrain.train.logger import Logger, LoggerGroup, read_metrics
from paxtrain.train.trackers import flatten

CHAR_RNN = "configs/char_rnn.yaml"


class Recorder(Logger):
    def __init__(self):
        self.calls = []

    def start(self, run_dir, hyperparams):
        self.calls.append(("start", run_dir, hyperparams))

    def write(self, step, scalars):
        self.calls.append(("write", step, dict(scalars)))

    def close(self):
        self.calls.append(("close",))


def fit(tmp_path, loggers, main_process=True):
    pax.seed_rng_key(0)
    trainer = Trainer(
        max_steps=4, run_dir=tmp_path, loggers=loggers, hyperparams={"lr": 0.1, "model": {"width": 3}},
        hooks=default_hooks(log_every=2, progress="off", plot=False),
    )
    trainer.is_main_process = main_process
    trainer.fit(Regression(), RegressionData(), optax.sgd(0.1))
    return trainer


def test_a_logger_object_gets_hyperparams_first_then_each_logged_step(tmp_path):
    recorder = Recorder()
    fit(tmp_path, ["jsonl", recorder])
    kinds = [call[0] for call in recorder.calls]
    assert kinds[0] == "start" and kinds[-1] == "close" and set(kinds[1:-1]) == {"write"}
    assert recorder.calls[0][1:] == (tmp_path, {"lr": 0.1, "model": {"width": 3}})
    written = [(step, scalars) for _, step, scalars in recorder.calls[1:-1]]
    # The same records as metrics.jsonl, step by step.
    assert [{"step": s, **sc} for s, sc in written] == read_metrics(tmp_path)
    assert [s for s, _ in written if "train/loss" in _] == [2, 4]


def test_only_the_main_process_logs(tmp_path):
    recorder = Recorder()
    fit(tmp_path / "other", ["jsonl", recorder], main_process=False)
    assert recorder.calls == [] and not (tmp_path / "other" / "metrics.jsonl").exists()


def test_jsonl_only_writes_no_event_files(tmp_path):
    fit(tmp_path, ["jsonl"])
    assert read_metrics(tmp_path) and not list(tmp_path.glob("events.out.tfevents*"))
    fit(tmp_path / "tb", ["tensorboard"])
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))
    assert not (tmp_path / "tb" / "metrics.jsonl").exists()


def test_tensorboard_records_the_hyperparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with LoggerGroup(["tensorboard"], tmp_path, hyperparams={"seed": 3}) as group:
        group.write(1, {"train/loss": 0.5})
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    assert [e.value for e in events.Scalars("train/loss")] == [0.5]
    (text,) = events.Tensors("hyperparams/text_summary")
    assert json.loads(text.tensor_proto.string_val[0].decode().strip("`\n")) == {"seed": 3}


def test_config_names_loggers_and_rejects_unknown_ones(tmp_path):
    cfg = compose(CHAR_RNN, ["trainer.loggers=[jsonl]"])
    assert list(cfg.trainer.loggers) == ["jsonl"]
    with pytest.raises(ConfigError, match=r"`trainer.loggers\[1\]`: Unknown logger 'tensorbord'"):
        build_trainer(compose(CHAR_RNN, ["trainer.loggers=[jsonl,tensorbord]"]), tmp_path)


def test_flatten_gives_tracker_param_names():
    assert flatten({"a": {"b": 1, "c": [2, {"d": 3}]}, "e": []}) == {
        "a.b": 1, "a.c.0": 2, "a.c.1.d": 3, "e": [],
    }  # fmt: skip


def test_a_jsonl_logger_section_feeds_the_plot(tmp_path):
    cfg = compose(CHAR_RNN, ["trainer.loggers=[{_target_: paxtrain.train.logger.JsonlLogger}]"])
    trainer, *_ = build_trainer(cfg, tmp_path)  # the plot hook finds metrics.jsonl's writer
    assert [type(logger).__name__ for logger in trainer.loggers] == ["JsonlLogger"]
