"""The Trainer's Python API: the loop, hooks, evaluation, early stopping, logging."""

import numpy as np
import optax
import pytest
from conftest import PoisonedData, Regression, RegressionData, read_jsonl

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.train import EarlyStopping, Hook, StepSettings, Trainer, default_hooks
from paxtrain.train.nonfinite import data_position, update_scale
from paxtrain.train.options import ema_model


class Recorder(Hook):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_eval_end(self, trainer, metrics):
        self.events.append(("eval", trainer.step, round(metrics["loss"], 6)))

    def on_train_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_fit_trains_evaluates_logs_and_calls_hooks(tmp_path):
    pax.seed_rng_key(0)
    recorder, every_5 = Recorder(), []
    trainer = Trainer(
        max_steps=20, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=5, eval_every=10, progress="off", plot=False, hooks=[recorder]),
    )
    trainer.add_hook(lambda tr, metrics: every_5.append((tr.step, float(metrics["loss"]))), every=5)
    state = trainer.fit(Regression(), RegressionData(), optax.adam(0.1))

    assert int(state.step) == 20 and trainer.step == 20
    assert [s for s, _ in every_5] == [5, 10, 15, 20]
    assert every_5[-1][1] < every_5[0][1]
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["start", "eval", "eval", "end"]
    assert [e[1] for e in recorder.events if e[0] == "eval"] == [10, 20]
    records = read_jsonl(tmp_path)
    assert [r["step"] for r in records if "train/loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in records if "eval/abs_err" in r] == [10, 20]
    assert all("perf/examples_per_s" in r for r in records if "train/loss" in r)
    eval_losses = [r["eval/loss"] for r in records if "eval/loss" in r]
    assert eval_losses[1] < eval_losses[0]


def test_steps_per_call_gives_the_same_model(tmp_path):
    states = []
    for spc in (1, 5):
        pax.seed_rng_key(0)
        trainer = Trainer(
            max_steps=10, run_dir=tmp_path / str(spc), loggers=["jsonl"],
            hooks=default_hooks(log_every=5, progress="off", plot=False),
            step=StepSettings(steps_per_call=spc),
        )
        states.append(trainer.fit(Regression(), RegressionData(), optax.adam(0.1)))
    np.testing.assert_allclose(states[0].model.fc.weight, states[1].model.fc.weight, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of steps_per_call"):
        Trainer(
            max_steps=10,
            step=StepSettings(steps_per_call=3),
        )


def test_early_stopping_stops_when_eval_stops_improving(tmp_path):
    pax.seed_rng_key(0)
    stopper = EarlyStopping("eval/loss", mode="min", patience=2, min_delta=10.0)
    trainer = Trainer(
        max_steps=100, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=5, eval_every=5, progress="off", plot=False, early_stopping=stopper),
    )
    state = trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
    # A min_delta of 10 means no evaluation after the first counts as an improvement.
    assert trainer.step == 15 and int(state.step) == 15
    assert "early stopping" in trainer.stop_reason
    with pytest.raises(ValueError, match="'min' or 'max'"):
        EarlyStopping("loss", mode="lowest")


def test_early_stopping_names_available_metrics_before_training(tmp_path):
    trainer = Trainer(
        max_steps=10, run_dir=tmp_path / "run", loggers=["jsonl"],
        hooks=default_hooks(eval_every=5, progress="off", plot=False, early_stopping=EarlyStopping("eval/accuracy")),
    )
    with pytest.raises(
        ValueError, match=r"monitors `eval/accuracy`.*\['eval/abs_err', 'eval/loss'\]"
    ):
        trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
    assert trainer.step == 0 and not (tmp_path / "run").exists()  # checked before training


def test_a_model_without_loss_is_explained(tmp_path):
    trainer = Trainer(
        max_steps=2, run_dir=tmp_path,
        hooks=default_hooks(progress="off", plot=False),
    )
    with pytest.raises(TypeError, match=r"def loss\(self, batch\)"):
        trainer.fit(nn.Linear(3, 1), RegressionData(), optax.adam(0.1))


def test_progress_log_lines_and_plot(tmp_path, capsys):
    pax.seed_rng_key(0)
    trainer = Trainer(
        max_steps=4, run_dir=tmp_path,
        hooks=default_hooks(log_every=2, progress="log", plot=True),
    )
    trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
    out = capsys.readouterr().out
    assert "step 2/4 | loss" in out and "step 4/4" in out and "eta" in out
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_an_ema_is_evaluated_beside_the_model(tmp_path):
    def mse(weight, bias):  # NumPy, over the eval batches (equal sizes)
        batches = list(RegressionData().eval_batches())
        return np.mean([np.mean((b["x"] @ weight + bias - b["y"]) ** 2) for b in batches])

    for ema_decay in (0.5, None):
        pax.seed_rng_key(0)
        trainer = Trainer(
            max_steps=3, run_dir=tmp_path / str(ema_decay), loggers=["jsonl"],
            hooks=default_hooks(progress="off", plot=False),
            step=StepSettings(ema_decay=ema_decay),
        )
        state = trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
        final = trainer.eval_history[-1][1]
        fc = state.model.fc
        np.testing.assert_allclose(final["loss"], mse(fc.weight, fc.bias), rtol=1e-5)
        if ema_decay is None:
            assert not any(k.startswith("ema_") for k in final)
            continue
        ema = ema_model(state).fc
        assert not np.allclose(ema.weight, fc.weight)  # a different model, evaluated as such
        np.testing.assert_allclose(final["ema_loss"], mse(ema.weight, ema.bias), rtol=1e-5)
        assert set(final) == {"loss", "abs_err", "ema_loss", "ema_abs_err"}


def test_on_nonfinite_stop(tmp_path):
    pax.seed_rng_key(0)
    trainer = Trainer(
        max_steps=20, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=2, on_nonfinite="stop", progress="off", plot=False),
        step=StepSettings(on_nonfinite="stop"),
    )
    state = trainer.fit(Regression(), PoisonedData({5}), optax.adam(0.1))
    assert trainer.step == 6 and "non-finite" in trainer.stop_reason
    assert np.isfinite(np.asarray(state.model.fc.weight)).all()


@pytest.mark.parametrize(
    "bad_steps, stuck",
    [(range(3, 200), True), (range(3, 40), False), ({*range(3, 20), *range(30, 60)}, False)],
    ids=["every step from 3 on", "37 in a row, then finite", "two runs of skips"],
)
def test_skip_stops_a_run_stuck_skipping_but_not_a_run_that_recovers(tmp_path, bad_steps, stuck):
    from paxtrain.train.nonfinite import STUCK_STEPS

    pax.seed_rng_key(0)
    trainer = Trainer(
        max_steps=100, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=10, progress="off", plot=False),
    )
    state = trainer.fit(Regression(), PoisonedData(bad_steps), optax.adam(0.1))
    assert trainer.stopped_on_nonfinite is stuck
    if stuck:  # stopped at the first check with STUCK_STEPS skipped in a row
        assert trainer.step == 60 and STUCK_STEPS == 50
        assert "every step from 11 to 60 was skipped" in trainer.stop_reason
    else:
        assert trainer.step == 100 and trainer.stop_reason is None
    assert np.isfinite(np.asarray(state.model.fc.weight)).all()


def test_on_nonfinite_rollback_restores_skips_batches_and_lowers_the_lr(tmp_path):
    from paxtrain.train.checkpointing import Checkpointing

    pax.seed_rng_key(0)
    seen = []

    class Recording(PoisonedData):
        def train_batch(self, step):
            seen.append(step)
            return super().train_batch(step)

    trainer = Trainer(
        max_steps=12, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=2, on_nonfinite="rollback", rollback_lr_factor=0.25, progress="off", plot=False, checkpointing=Checkpointing(every_steps=4, async_save=False)),
        step=StepSettings(on_nonfinite="rollback"),
    )
    state = trainer.fit(Regression(), Recording({5}), optax.adam(0.1))
    # Bad batch 5 is seen at step 6 (a log step): back to checkpoint 4, batches 4-5 skipped,
    # so steps 5..12 read batches 7..14.
    assert int(state.step) == 12 and update_scale(state) == 0.25
    assert data_position(state, 0) == 2
    assert 5 not in seen[seen.index(5) + 1 :] and max(seen) >= 13
    records = read_jsonl(tmp_path)
    assert any(r.get("rollback/to_step") == 4 for r in records)
    assert np.isfinite(np.asarray(state.model.fc.weight)).all()


@pytest.mark.parametrize("factor", [0.0, -0.5, 2.0])
def test_a_rollback_lr_factor_outside_0_1_is_refused(tmp_path, factor):
    with pytest.raises(ValueError, match=r"rollback_lr_factor must be in \(0, 1\]"):
        Trainer(
            4, run_dir=tmp_path,
            hooks=default_hooks(on_nonfinite="rollback", rollback_lr_factor=factor),
            step=StepSettings(on_nonfinite="rollback"),
        )


def test_rollback_without_checkpoints_is_explained(tmp_path):
    trainer = Trainer(
        max_steps=8, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=2, on_nonfinite="rollback", progress="off", plot=False),
        step=StepSettings(on_nonfinite="rollback"),
    )
    with pytest.raises(RuntimeError, match="needs checkpoints to roll back to"):
        trainer.fit(Regression(), PoisonedData({1}), optax.adam(0.1))


def test_rollback_before_the_first_save_says_so(tmp_path):
    from paxtrain.train.checkpointing import Checkpointing

    trainer = Trainer(
        max_steps=8, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=2, on_nonfinite="rollback", progress="off", plot=False, checkpointing=Checkpointing(every_steps=4, async_save=False)),
        step=StepSettings(on_nonfinite="rollback"),
    )
    with pytest.raises(RuntimeError, match=r"before step 2 asked for a rollback .* no checkpoint"):
        trainer.fit(Regression(), PoisonedData({1}), optax.adam(0.1))


def test_skipped_steps_is_logged_as_a_count(tmp_path):
    trainer = Trainer(
        max_steps=8, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=4, progress="off", plot=False),
    )
    trainer.fit(Regression(), PoisonedData({1, 2, 5}), optax.adam(0.1))
    logged = {
        r["step"]: r["train/skipped_steps"]
        for r in read_jsonl(tmp_path)
        if "train/skipped_steps" in r
    }
    assert logged == {4: 2.0, 8: 3.0}  # steps 2, 3 and 6 read the poisoned batches 1, 2, 5


class RaggedEvalData(RegressionData):
    """Eval batches of 16, 16 and 5 examples."""

    def eval_batches(self):
        batches = [self._batch(10_000 + i) for i in range(3)]
        batches[-1] = {k: v[:5] for k, v in batches[-1].items()}
        return iter(batches)


def test_eval_weights_each_batch_by_its_examples(tmp_path):
    pax.seed_rng_key(0)
    trainer = Trainer(
        max_steps=3, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(progress="off", plot=False),
    )
    data = RaggedEvalData()
    state = trainer.fit(Regression(), data, optax.adam(0.1))
    examples = list(data.eval_batches())
    x = np.concatenate([b["x"] for b in examples]).astype(np.float64)
    y = np.concatenate([b["y"] for b in examples]).astype(np.float64)
    fc = state.model.fc
    expected = np.mean((x @ np.asarray(fc.weight) + np.asarray(fc.bias) - y) ** 2)
    assert len(x) == 37
    np.testing.assert_allclose(trainer.eval_metrics()["loss"], expected, rtol=1e-5)
    per_batch_mean = np.mean([trainer._eval_step(state, b)["loss"] for b in examples])
    assert abs(per_batch_mean - expected) > 1e-3 * expected  # the unweighted mean is wrong


def test_checkpoints_save_the_state_itself_not_a_device_copy(tmp_path, monkeypatch):
    # Orbax copies every array to host before `save` returns, so the step that follows may
    # donate the buffers: an on-device copy of the whole state first would only double the
    # device memory a save needs.
    import jax

    from paxtrain.checkpoint.store import CheckpointManager
    from paxtrain.train.checkpointing import Checkpointing

    handed = []
    save = CheckpointManager.save

    def spy(self, state, **kwargs):
        handed.append(all(a is b for a, b in zip(*map(jax.tree.leaves, (state, trainer.state)))))
        return save(self, state, **kwargs)

    monkeypatch.setattr(CheckpointManager, "save", spy)
    pax.seed_rng_key(0)
    checkpointing = Checkpointing(every_steps=2)
    trainer = Trainer(
        4, run_dir=tmp_path,
        hooks=default_hooks(progress="off", plot=False, checkpointing=checkpointing),
    )
    trainer.fit(Regression(), RegressionData(), optax.sgd(0.1))
    assert handed == [True, True]
