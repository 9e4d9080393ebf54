"""Exact resume across the Trainer's options: a run interrupted at step K and resumed by a new
Trainer (fresh objects, as a new process builds them) ends bitwise where the uninterrupted
run ends, and logs the same metrics after K.

Each row trains N steps straight through, saving a checkpoint at K; a hook copies the run
directory right after that save, which is what a process killed at step K leaves on disk. A
new Trainer resumes the copy to N. Every leaf of the final state (parameters, optimizer state,
EMA, RNG, extras, step), the hooks' states, the kept checkpoints and the logged train/eval
metrics after K must be equal. The default run has one row of all options together and the
rows that need a run of their own; the slow step has each option alone.
"""

import functools
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cli_support import CHAR_RNN, TINY_CHAR_RNN
from conftest import read_jsonl
from test_cli_run_safety import Counter, trainer_for

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.checkpoint.store import flatten_state
from paxtrain.cli.app import main
from paxtrain.cli.commands import exit_code
from paxtrain.data.text import CharCorpus
from paxtrain.errors import ConfigError
from paxtrain.optim import make_transformation
from paxtrain.recipes.llama_lm import LlamaLM
from paxtrain.train import EarlyStopping, Hook, TrainState, make_train_step
from paxtrain.train.checkpointing import Checkpointing
from paxtrain.train.nonfinite import (
    ROLLBACKS_IN_A_ROW,
    data_position,
    rolled_back,
    update_scale,
)
from paxtrain.train.trainer import model_loss

N, K = 6, 3
CLASSES = np.random.default_rng(99).normal(size=(8, 4)).astype(np.float32)


class Net(pax.Module):
    """An 8-16-4 classifier, with a BatchNorm and a Dropout (a key state) when asked."""

    def __init__(self, batch_norm: bool = False, dropout: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.BatchNorm1D(16) if batch_norm else None
        self.drop = nn.Dropout(0.5) if dropout else None
        self.fc2 = nn.Linear(16, 4)

    def __call__(self, x):
        x = self.fc1(x)
        if self.norm is not None:
            x = self.norm(x)
        x = jnp.tanh(x)
        if self.drop is not None:
            x = self.drop(x)
        return self.fc2(x)

    def loss(self, batch):
        logits = self(batch["x"]).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, {"accuracy": (logits.argmax(-1) == batch["y"]).mean()}


def noisy_input_loss(model, batch, key):
    """A loss that draws from the trainer's RNG (`state.rng`) every step."""
    noisy = {**batch, "x": pax.dropout(key, 0.25, batch["x"])}
    model, (loss, metrics) = pax.purecall(model.loss, noisy)
    return loss, (model, metrics)


class Blobs:
    """Step-indexed batches of 16 examples in 4 classes; NaN inputs at `bad_steps`."""

    info = {}

    def __init__(self, bad_steps=()):
        self.bad_steps = set(bad_steps)

    def _batch(self, seed):
        x = np.random.default_rng(seed).normal(size=(16, 8)).astype(np.float32)
        return {"x": x, "y": (x @ CLASSES).argmax(-1).astype(np.int32)}

    def train_batch(self, step):
        batch = self._batch(step)
        if step in self.bad_steps:
            batch["x"] = batch["x"] * np.nan
        return batch

    def eval_batches(self):
        return (self._batch(10_000 + i) for i in range(2))


class CopyRunDirAt(Hook):
    """Copies the run directory the first time the trainer is at `step`, after its checkpoint
    (if it saves one) is written: what a process killed then leaves on disk."""

    order = 1  # after the checkpoint's save

    def __init__(self, step, target):
        self.step, self.target, self.done = step, target, False

    def on_step(self, trainer, metrics):
        if trainer.step == self.step and not self.done:
            trainer.checkpoints.wait()
            shutil.copytree(trainer.run_dir, self.target)
            self.done = True


class SignalAt(Hook):
    """A preemption signal at `step`: the run saves and stops gracefully."""

    order = 1  # after the checkpoint's save

    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, metrics):
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=N)
# The rows with `"model": "llama"`: the llama_lm recipe's model, small, on text windows.
LLAMA = {"vocab_size": 98, "num_heads": 4, "num_kv_heads": 2, "model_dim": 16}
MODELS = {
    "net": (Net, lambda settings: Blobs(settings.get("bad_steps", ()))),
    "llama": (
        functools.partial(LlamaLM, **LLAMA),
        lambda settings: CharCorpus(seq_len=16, batch_size=4, eval_batches=1, max_chars=20_000),
    ),
}

# id: (Trainer options, model options, other settings)
ROWS = {
    "defaults": ({}, {}, {}),
    "ema": ({"ema_decay": 0.9}, {}, {}),
    "grad_accum": ({"grad_accum_steps": 2}, {}, {}),
    "steps_per_call": ({"steps_per_call": 2}, {}, {"k": 2}),
    # A checkpoint every 3 steps with 2 steps per call is saved at step 4.
    "steps_per_call_every_3": ({"steps_per_call": 2}, {}, {"k": 4}),
    "bfloat16": ({"precision": "bfloat16"}, {}, {}),
    "float16": ({"precision": "float16"}, {}, {}),
    "dropout_layer": ({}, {"dropout": True}, {}),
    "loss_with_key": ({}, {}, {"loss_fn": noisy_input_loss}),
    "batch_norm": ({}, {"batch_norm": True}, {}),
    "schedule": ({}, {}, {"lr": SCHEDULE}),
    # Bad batch 3 is read at step 4 and seen at step 4 (a log step): back to checkpoint 3,
    # then on with data_offset 1 and the update scale halved; interrupted at step 5.
    "rollback": (
        {"on_nonfinite": "rollback", "log_every": 2},
        {},
        {"bad_steps": {3}, "k": 5, "every": 1, "n": 8},
    ),
    # A learning rate too high: eval/loss is best at step 1, early stopping ends the run at
    # step 4 (after the resume), keep_best keeps checkpoint 1 besides the last one.
    "eval_early_stopping_keep_best": (
        {"eval_every": 1, "early_stopping": 3},
        {},
        {"keep_best": True, "lr": 0.3, "k": 2, "every": 1},
    ),
    # Interrupted after the rollback but before the next save: the resume replays the rollback.
    "rollback_then_killed": (
        {"on_nonfinite": "rollback", "log_every": 2},
        {},
        {"bad_steps": {3}, "k": 5, "every": 3, "n": 8, "resume_at": 3},
    ),
    "rollback_steps_per_call": (
        {"on_nonfinite": "rollback", "log_every": 2, "steps_per_call": 2},
        {},
        {"bad_steps": {3}, "k": 6, "every": 2, "n": 8},
    ),
    # Skipped (on_nonfinite="skip"): step 3 reads bad batch 2; interrupted at step 3, between
    # two log steps, with its NaN loss pending in the checkpoint.
    "skipped_step_pending": ({"log_every": 2}, {}, {"bad_steps": {2}}),
    # Every batch from 2 on is bad: the skip policy calls the run stuck after STUCK_STEPS
    # skipped in a row; interrupted at 30, between two checks (log steps).
    "stuck_skipping": (
        {"log_every": 4},
        {},
        {"bad_steps": range(2, 999), "k": 30, "every": 10, "n": 80},
    ),
    # Every batch from 3 on is bad: rollbacks to step 3 until the policy gives up.
    "rollback_gives_up": (
        {"on_nonfinite": "rollback", "log_every": 1},
        {},
        {"bad_steps": range(3, 999), "every": 1, "n": 30},
    ),
    # float16: the bad step halves the loss scale; then a rollback with that scale restored.
    "float16_skipped": ({"precision": "float16"}, {}, {"bad_steps": {1}}),
    "float16_rollback": (
        {"precision": "float16", "on_nonfinite": "rollback", "ema_decay": 0.9},
        {},
        {"bad_steps": {3}, "k": 5, "every": 1, "n": 8},
    ),
    "preempted_steps_per_call": ({"steps_per_call": 2}, {}, {"interrupt": "signal", "k": 4}),
    # A graceful stop (SIGUSR1) between two log steps and two checkpoints.
    "preempted": ({}, {}, {"interrupt": "signal", "every": 100}),
    "preempted_eval_early_stopping": (
        {"eval_every": 1, "early_stopping": 3},
        {},
        {"interrupt": "signal", "lr": 0.3, "every": 100},
    ),
    "frozen_fc1": ({"ema_decay": 0.9}, {}, {"freeze": True}),
    "everything": (
        {"ema_decay": 0.9, "grad_accum_steps": 2, "steps_per_call": 2, "precision": "bfloat16"},
        {"dropout": True, "batch_norm": True},
        {"lr": SCHEDULE, "k": 2, "async_save": True, "factory": True},
    ),
    "no_guard": ({"on_nonfinite": "none", "grad_norm": False}, {}, {}),
    "pmap": ({"strategy": "pmap", "ema_decay": 0.9}, {"batch_norm": True}, {}),
    # As `paxtrain fit` builds it: a function that builds the model, the state built under jit.
    "model_factory": ({}, {"dropout": True}, {"factory": True}),
    "llama_lm": ({"eval_every": 2}, {}, {"model": "llama"}),
    "llama_lm_scanned_remat_tied": (
        {},
        {"scan_layers": True, "remat": "dots", "tie_embeddings": True},
        {"model": "llama"},
    ),
    "llama_lm_everything": (
        {"ema_decay": 0.9, "grad_accum_steps": 2, "steps_per_call": 2, "precision": "bfloat16"},
        {"scan_layers": True},
        {"model": "llama", "lr": SCHEDULE, "k": 2, "async_save": True, "factory": True},
    ),
}


def build_and_fit(row, run_dir, *interrupts):
    """Builds every object of a row (a value of `ROWS`) anew, as a new process would, and
    trains it, with `interrupts` as the last hooks."""
    options, model_options, settings = row
    options = dict(options)
    n, every = settings.get("n", N), settings.get("every", settings.get("k", K))
    pax.seed_rng_key(0)
    build_model, build_data = MODELS[settings.get("model", "net")]
    model = build_model(**model_options)
    if settings.get("freeze"):
        model = model.replace(fc1=pax.freeze_parameters(model.fc1))
    if settings.get("factory"):
        model = functools.partial(build_model, **model_options)
    keep_best = settings.get("keep_best", False)
    checkpointing = Checkpointing(
        every_steps=every, async_save=settings.get("async_save", False), keep_last=1 if keep_best else 3,
        keep_best=1 if keep_best else 0, monitor="eval/loss" if keep_best else None,
    )  # fmt: skip
    if "early_stopping" in options:
        options["early_stopping"] = EarlyStopping("eval/loss", patience=options["early_stopping"])
    trainer = trainer_for(
        run_dir, n, **{"eval_every": None, "log_every": 2, **options},
        checkpointing=checkpointing, hooks=[Counter()],
    )  # fmt: skip
    trainer.hooks.extend(interrupts)  # after the checkpoint's save
    optimizer = make_transformation("adam", settings.get("lr", 0.05))
    state = trainer.fit(model, build_data(settings), optimizer, loss_fn=settings.get("loss_fn"))
    return trainer, state


def logged_after(run_dir, step, skip=0):
    """The records logged after `step`, in order, without the timings and without the first
    `skip` lines (those an earlier process wrote). A step logged again after a resume is marked
    `repeated`: the mark is left out too."""
    records = []
    for record in read_jsonl(run_dir)[skip:]:
        kept = {k: v for k, v in record.items() if not k.startswith("perf/") and k != "repeated"}
        if record["step"] > step and len(kept) > 1:
            records.append(kept)
    return records


# The default run checks these; the slow step the rows whose options "everything" combines
# (each alone, to name the option that breaks) and the longer variants.
FAST_ROWS = (
    "defaults", "float16", "loss_with_key", "rollback", "skipped_step_pending",
    "eval_early_stopping_keep_best", "preempted", "frozen_fc1", "everything",
)  # fmt: skip


@pytest.mark.parametrize(
    "row", [row if row in FAST_ROWS else pytest.param(row, marks=pytest.mark.slow) for row in ROWS]
)
def test_a_resumed_run_ends_bitwise_where_the_uninterrupted_one_does(row, tmp_path):
    settings = ROWS[row][2]
    k = settings.get("k", K)
    preempted = settings.get("interrupt") == "signal"
    if preempted:
        whole, whole_state = build_and_fit(ROWS[row], tmp_path / "whole")
        build_and_fit(ROWS[row], tmp_path / "resumed", SignalAt(k))
    else:
        whole, whole_state = build_and_fit(
            ROWS[row], tmp_path / "whole", CopyRunDirAt(k, tmp_path / "resumed")
        )
    written_before = len(read_jsonl(tmp_path / "resumed"))
    resumed, resumed_state = build_and_fit(ROWS[row], tmp_path / "resumed")
    k = settings.get("resume_at", k)
    assert resumed.resumed_from == k  # it did resume, from step K

    expected, got = flatten_state(whole_state), flatten_state(resumed_state)
    assert got.keys() == expected.keys()
    for path in expected:
        assert np.dtype(got[path].dtype) == np.dtype(expected[path].dtype), path
        np.testing.assert_array_equal(got[path], expected[path], err_msg=path)
    assert resumed.hooks.state_dicts() == whole.hooks.state_dicts()
    # A preempted run also saved at K, which keep_last may still keep.
    kept = [s for s in resumed.checkpoints.steps() if s > k or not preempted]
    assert kept == [s for s in whole.checkpoints.steps() if s > k or not preempted]
    assert resumed.checkpoints.best_step() == whole.checkpoints.best_step()
    expected_logs = logged_after(tmp_path / "whole", k)
    assert any("train/loss" in r for r in expected_logs)
    assert logged_after(tmp_path / "resumed", k, written_before) == expected_logs
    if ROWS[row][0].get("precision"):  # float32 master weights, also after a resume
        for leaf in jax.tree_util.tree_leaves(pax.select_parameters(resumed_state.model)):
            assert leaf.dtype == jnp.float32


def test_a_resume_with_other_steps_per_call_is_refused_between_calls_and_logs_per_step(tmp_path):
    # Saved every step by a run with one step per call, logging every 3 steps.
    saved_by = ({"log_every": 3}, {}, {"every": 1})
    whole, _ = build_and_fit(
        saved_by, tmp_path / "whole",
        CopyRunDirAt(3, tmp_path / "at_3"), CopyRunDirAt(4, tmp_path / "at_4"),
    )  # fmt: skip
    two_per_call = ({"log_every": 3, "steps_per_call": 2}, {}, {"every": 1})
    # From step 3, calls of two steps would end at 5 and 7, past max_steps.
    with pytest.raises(ConfigError, match=r"at step 3, not a multiple of trainer.steps_per_call"):
        build_and_fit(two_per_call, tmp_path / "at_3")
    # From step 4, with step 4's metrics pending (a single step's) and steps 5-6 from one call.
    written_before = len(read_jsonl(tmp_path / "at_4"))
    resumed, state = build_and_fit(two_per_call, tmp_path / "at_4")
    assert resumed.step == int(state.step) == N
    [logged] = [r for r in read_jsonl(tmp_path / "at_4")[written_before:] if "train/loss" in r]
    [expected] = [r for r in read_jsonl(tmp_path / "whole") if "train/loss" in r and r["step"] == N]
    assert logged["step"] == N
    # One call of two steps is not bitwise two calls of one (a scan compiles differently).
    np.testing.assert_allclose(logged["train/loss"], expected["train/loss"], rtol=1e-5)


def test_paxtrain_resume_with_other_steps_per_call_exits_2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny = [*TINY_CHAR_RNN, "callbacks=[]", "trainer.plot=false", "trainer.progress=off"]
    assert main(["fit", CHAR_RNN, *tiny, "trainer.max_steps=3", f"run_dir={run_dir}"]) == 0
    capsys.readouterr()
    resume = ["resume", str(run_dir), "trainer.max_steps=6", "trainer.steps_per_call=2",
              "optimizer.horizon=6"]  # fmt: skip
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert err.startswith("paxtrain: config error: the checkpoint in ") and err.count("\n") == 1
    assert "at step 3, not a multiple of trainer.steps_per_call (2)" in err
    assert "Resume with a trainer.steps_per_call that divides 3" in err


def test_an_early_stopped_run_logs_its_last_steps_and_a_resume_has_nothing_to_train(tmp_path):
    # eval/loss is best at step 1: patience 2 stops the run at step 3, patience 3 at step 4.
    def stopping(patience, log_every):
        return (
            {"eval_every": 1, "early_stopping": patience, "log_every": log_every},
            {},
            {"lr": 0.3, "every": 100},
        )

    stopped, _ = build_and_fit(stopping(2, log_every=2), tmp_path / "run")
    assert stopped.step == 3 and stopped.stop_reason.startswith("early stopping")
    every_step, _ = build_and_fit(stopping(3, log_every=1), tmp_path / "every_step")
    [at_3] = [r for r in read_jsonl(tmp_path / "run") if r["step"] == 3 and "train/loss" in r]
    [alone] = [
        r for r in read_jsonl(tmp_path / "every_step") if r["step"] == 3 and "train/loss" in r
    ]
    assert at_3["train/loss"] == alone["train/loss"]  # step 3, after the log step 2

    written = len(read_jsonl(tmp_path / "run"))
    again, state = build_and_fit(stopping(2, log_every=2), tmp_path / "run")
    assert again.nothing_to_train and again.step == int(state.step) == 3
    assert "raise `trainer.early_stopping.patience` to train further" in again.stop_reason
    assert len(read_jsonl(tmp_path / "run")) == written
    assert again.checkpoints.steps() == [3]
    # More patience: it trains on, and stops where a run with that patience stops.
    longer, _ = build_and_fit(stopping(3, log_every=2), tmp_path / "run")
    assert longer.step == every_step.step == 4 and not longer.nothing_to_train


def test_a_rollback_logs_the_bad_steps_at_their_step_and_records_the_data_position(tmp_path):
    trainer, state = build_and_fit(ROWS["rollback"], tmp_path)
    # Steps 3-4 (bad batch 3 read at step 4) are logged at step 4, then the rollback at step 3.
    logged = [
        (r["step"], r.get("train/skipped_steps"), "rollback/to_step" in r)
        for r in read_jsonl(tmp_path)
        if "eval/loss" not in r
    ]
    assert logged == [
        (2, 0.0, False),
        (4, 1.0, False),
        (3, None, True),
        (4, 0.0, False),
        (6, 0.0, False),
        (8, 0.0, False),
    ]
    # The checkpoints record the stream position they resume at: step plus the skipped batch.
    manager = trainer.checkpoints
    assert data_position(state, 0) == 1
    assert [manager.meta(step)["data_position"] for step in manager.steps()] == [7, 8, 9]


def test_turning_rollbacks_on_changes_no_number_until_a_rollback(tmp_path):
    _, skipping = build_and_fit(({}, {}, {}), tmp_path / "skip")
    _, rolling = build_and_fit(({"on_nonfinite": "rollback"}, {}, {}), tmp_path / "rollback")
    for path, leaf in flatten_state(skipping.model).items():
        np.testing.assert_array_equal(flatten_state(rolling.model)[path], leaf, err_msg=path)


def test_a_rollback_step_keeps_bfloat16_parameters_bfloat16():
    pax.seed_rng_key(0)
    model = pax.apply_mp_policy(Net(), "params=bfloat16,compute=bfloat16,output=float32")
    state = TrainState.create(model, optax.sgd(0.1))
    step = make_train_step(model_loss, rollback=True)
    state = step.init(state)
    state = rolled_back(state, state, bad_step=0, lr_factor=0.5)  # updates at half scale
    new, metrics = step(state, Blobs().train_batch(0))
    assert int(metrics["skipped_steps"]) == 0
    for leaf in jax.tree_util.tree_leaves(pax.select_parameters(new.model)):
        assert leaf.dtype == jnp.bfloat16


def test_rollbacks_that_do_not_help_stop_the_run_with_the_nonfinite_exit_code(tmp_path):
    row = (
        {"on_nonfinite": "rollback", "log_every": 1},
        {},
        {"bad_steps": range(3, 999), "every": 1},
    )
    trainer, state = build_and_fit(row, tmp_path)
    assert trainer.stopped_on_nonfinite and exit_code(trainer) == 3
    assert trainer.stop_reason.startswith(
        f"non-finite loss or gradients before step 4 after {ROLLBACKS_IN_A_ROW} rollbacks in a row to step 3"
    )
    assert trainer.step == 4 and update_scale(state) == 0.5**ROLLBACKS_IN_A_ROW
    rollbacks = [r["rollback/to_step"] for r in read_jsonl(tmp_path) if "rollback/to_step" in r]
    assert rollbacks == [3] * ROLLBACKS_IN_A_ROW


def test_a_second_rollback_to_one_checkpoint_skips_on_and_lowers_the_rate_again(tmp_path):
    # Bad batches 3 and 4: the first rollback (to 3) goes on with batch 4, the second skips it.
    row = ({"on_nonfinite": "rollback", "log_every": 1}, {}, {"bad_steps": {3, 4}, "every": 1})
    trainer, state = build_and_fit(row, tmp_path)
    assert not trainer.stopped_on_nonfinite and trainer.step == N
    assert data_position(state, 0) == 2 and update_scale(state) == 0.25
    rollbacks = [
        (r["step"], r["rollback/update_scale"])
        for r in read_jsonl(tmp_path)
        if "rollback/to_step" in r
    ]
    assert rollbacks == [(3, 0.5), (3, 0.25)]
    # The logged learning rate is the rate of the updates made: the optimizer's times the scale.
    rates = {r["step"]: r["train/learning_rate"] for r in read_jsonl(tmp_path) if "train/loss" in r}
    assert rates[2] == float(np.float32(0.05)) and rates[N] == float(np.float32(0.05) * 0.25)
