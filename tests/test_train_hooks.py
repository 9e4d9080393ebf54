"""The Trainer <-> hooks seam: cadence declared once, state kept by identity, a narrow view,
restoring owned by the trainer, one rule for `monitor`, constructors that check their rules."""

import optax
import pytest
from test_train_trainer import Recorder, Regression, RegressionData, read_jsonl

import paxtrain as pax
from paxtrain.checkpoint.store import CheckpointManager
from paxtrain.errors import ArgumentError
from paxtrain.train import EarlyStopping, Hook, Monitor, StepSettings, Trainer, default_hooks
from paxtrain.train.checkpointing import Checkpointing
from paxtrain.train.dispatch import HookList, due
from paxtrain.train.progress import Progress


def fit(tmp_path, max_steps=10, **hook_options):
    pax.seed_rng_key(0)
    options = {"log_every": 2, "progress": "off", "plot": False, **hook_options}
    trainer = Trainer(max_steps, run_dir=tmp_path, hooks=default_hooks(**options), loggers=["jsonl"])
    trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
    return trainer


class Every(Hook):
    """Records the steps its `on_step` runs at."""

    def __init__(self, every, at_end=False, skip_last=False):
        self.every, self.at_end, self.skip_last, self.steps = every, at_end, skip_last, []

    def on_step(self, view, metrics):
        self.steps.append(view.step)


@pytest.mark.parametrize(
    "every, at_end, skip_last, spc, expected",
    [
        (3, False, False, 1, [3, 6, 9, 12]),
        (3, True, False, 1, [3, 6, 9, 12]),
        (5, True, False, 1, [5, 10, 12]),
        (5, False, False, 1, [5, 10]),
        (3, False, True, 1, [3, 6, 9]),
        (5, False, False, 4, [8, 12]),  # a multiple of 5 crossed by the call: (4, 8], (8, 12]
        (None, True, False, 2, [12]),
        (1, False, False, 4, [4, 8, 12]),
    ],
)
def test_the_dispatcher_calls_on_step_at_the_declared_cadence(
    tmp_path, every, at_end, skip_last, spc, expected
):
    hook = Every(every, at_end, skip_last)
    pax.seed_rng_key(0)
    trainer = Trainer(
        12, run_dir=tmp_path, hooks=default_hooks(progress="off", plot=False, hooks=[hook]),
        step=StepSettings(steps_per_call=spc), loggers=["jsonl"],
    )  # fmt: skip
    trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
    assert hook.steps == expected
    # The reference: the steps whose call crossed a multiple, by counting each step.
    calls = range(spc, 13, spc)
    by_count = [s for s in calls if every and any(k % every == 0 for k in range(s - spc + 1, s + 1))]
    reference = sorted({*by_count, *([12] if at_end else [])} - ({12} if skip_last else set()))
    assert hook.steps == reference


def test_due_is_the_one_cadence_rule():
    hook = Every(10, at_end=True)
    assert [s for s in range(1, 26) if due(hook, s, 1, 25)] == [10, 20, 25]
    hook.skip_last = True
    assert [s for s in range(1, 31) if due(hook, s, 1, 30)] == [10, 20]


def test_hook_state_is_keyed_by_identity_not_position():
    loss, acc = EarlyStopping("loss"), EarlyStopping("eval/accuracy", mode="max")
    assert loss.state_key == "EarlyStopping{monitor=eval/loss,mode=min}"
    assert acc.state_key == "EarlyStopping{monitor=eval/accuracy,mode=max}"
    loss.best, acc.best = 1.5, -0.75
    saved = HookList([loss, acc]).state_dicts()
    # The same hooks in another order, and one more: each finds its own state.
    loss2, acc2 = EarlyStopping("eval/loss"), EarlyStopping("accuracy", mode="max")
    HookList([acc2, EarlyStopping("eval/abs_err"), loss2]).load_state_dicts(saved)
    assert (loss2.best, acc2.best) == (1.5, -0.75)


def test_two_hooks_with_one_state_key_are_refused():
    with pytest.raises(ArgumentError, match=r"same key `EarlyStopping\{monitor=eval/loss"):
        HookList([EarlyStopping("loss"), EarlyStopping("eval/loss", patience=5)])


def test_a_checkpoint_with_hook_states_saved_by_position_resumes_them(tmp_path, monkeypatch):
    def by_position(self):  # how checkpoints recorded hook states before `state_key`
        states = {}
        for hook in self:
            if hook.has_state:
                index = [h for h in self if type(h) is type(hook)].index(hook)
                states[type(hook).__name__ + (f"#{index}" if index else "")] = hook.state_dict()
        return states

    def stoppers():
        return [EarlyStopping("loss", patience=99), EarlyStopping("abs_err", patience=99)]

    def checkpointing():
        return Checkpointing(every_steps=2, async_save=False)

    monkeypatch.setattr(HookList, "state_dicts", by_position)
    fit(tmp_path, 4, eval_every=2, hooks=stoppers(), checkpointing=checkpointing())
    saved = CheckpointManager(tmp_path / "checkpoints", read_only=True).meta(4)["hooks"]
    assert {"EarlyStopping", "EarlyStopping#1", "TrainMetrics"} <= set(saved)
    monkeypatch.undo()

    class Seen(Hook):
        def on_train_start(self, view):
            self.bests = [(h.best, h.bad_evals) for h in resumed]

    resumed, seen = stoppers(), Seen()
    trainer = fit(tmp_path, 6, eval_every=2, hooks=[*resumed, seen], checkpointing=checkpointing())
    assert trainer.resumed_from == 4
    expected = [saved[key]["best"] for key in ("EarlyStopping", "EarlyStopping#1")]
    assert [best for best, _ in seen.bests] == expected and None not in expected
    assert expected[0] != expected[1]  # each got its own, by position
    # Saved again, now by identity.
    again = CheckpointManager(tmp_path / "checkpoints", read_only=True).meta(6)["hooks"]
    assert {"EarlyStopping{monitor=eval/loss,mode=min}", "EarlyStopping{monitor=eval/abs_err,mode=min}"} <= set(again)


@pytest.mark.parametrize("monitor", ["loss", "eval/loss"])
def test_keep_best_with_monitor_loss_or_eval_loss_keeps_the_same_checkpoints(tmp_path, monitor):
    # mode="max" on a loss that falls: the best is the first evaluation, not the newest.
    checkpointing = Checkpointing(
        every_steps=2, keep_last=1, keep_best=1, monitor=monitor, mode="max", async_save=False
    )
    trainer = fit(tmp_path, 10, eval_every=2, checkpointing=checkpointing)
    assert trainer.checkpoints.steps() == [2, 10]
    assert trainer.checkpoints.best_step() == 2
    evals = [r["eval/loss"] for r in read_jsonl(tmp_path) if "eval/loss" in r]
    assert evals[0] == max(evals)  # the reference: step 2's eval loss is the largest


def test_monitor_loss_and_eval_loss_stop_early_at_the_same_step(tmp_path):
    stopped = []
    for monitor in ("loss", "eval/loss"):
        stopper = EarlyStopping(monitor, patience=2, min_delta=10.0)
        trainer = fit(tmp_path / monitor.replace("/", "_"), 100, eval_every=5, early_stopping=stopper)
        stopped.append((trainer.step, trainer.stop_reason))
    assert stopped[0] == stopped[1] == (15, stopped[0][1])
    assert "eval/loss has not improved for 2 evaluations" in stopped[0][1]


def test_monitor_has_one_rule_for_the_eval_prefix():
    assert Monitor("loss") == Monitor("eval/loss")
    assert (Monitor("loss").key, Monitor("eval/loss").name) == ("eval/loss", "loss")
    with pytest.raises(ArgumentError, match=r"mode must be 'min' or 'max'") as error:
        Monitor("loss", "lowest")
    assert error.value.argument == "mode"


def test_an_unknown_progress_mode_is_refused_listing_the_modes():
    with pytest.raises(ArgumentError, match=r"progress is 'bra'; choose one of \('auto', 'bar'"):
        Progress("bra")
    with pytest.raises(ArgumentError, match="progress is 'bra'"):
        default_hooks(progress="bra")


@pytest.mark.parametrize(
    "build, argument, message",
    [
        (lambda: Trainer(10, step=StepSettings(steps_per_call=3)), "max_steps", "multiple of"),
        (lambda: Trainer(0), "max_steps", "at least 1"),
        (lambda: StepSettings(grad_accum_steps=0), "grad_accum_steps", "at least 1"),
        (lambda: StepSettings(ema_decay=1.0), "ema_decay", r"\[0, 1\)"),
        (lambda: StepSettings(on_nonfinite="ignore"), "on_nonfinite", "choose one of"),
        (lambda: StepSettings(precision="float8"), "precision", "float8"),
        (lambda: default_hooks(log_every=0), "log_every", "at least 1"),
        (lambda: default_hooks(eval_every=0), "eval_every", "at least 1"),
        (lambda: default_hooks(rollback_lr_factor=0.0), "rollback_lr_factor", r"\(0, 1\]"),
        (lambda: Checkpointing(keep_best=1), "keep_best", "needs the metric"),
        (lambda: Checkpointing(every_steps=0), "every_steps", "at least 1"),
        (lambda: Checkpointing(keep_last=0), "keep_last", "at least 1"),
        (lambda: EarlyStopping("loss", patience=0), "patience", "at least 1"),
    ],
)
def test_constructors_check_their_rules_naming_the_parameter(build, argument, message):
    with pytest.raises(ArgumentError, match=message) as error:
        build()
    assert error.value.argument == argument and isinstance(error.value, ValueError)


def test_hooks_get_a_view_that_cannot_assign_to_the_trainer(tmp_path):
    seen = []

    class Peek(Hook):
        every = 5

        def on_step(self, view, metrics):
            seen.append((type(view).__name__, view.step, view.max_steps))
            with pytest.raises(AttributeError):
                view.step = 0

    trainer = fit(tmp_path, 10, hooks=[Peek()])
    assert seen == [("TrainerViewOf", 5, 10), ("TrainerViewOf", 10, 10)]
    assert trainer.step == 10


def test_restore_latest_and_continue_from_go_back_to_the_newest_checkpoint(tmp_path):
    class GoBack(Hook):
        """At step 6, trains on from the newest checkpoint (step 4), once."""

        every, done = 6, False

        def on_step(self, view, metrics):
            if not self.done:
                self.done = True
                state = view.restore_latest()
                assert int(state.step) == 4 and view.step == 6  # not installed yet
                view.continue_from(state)

    recorder = Recorder()
    checkpointing = Checkpointing(every_steps=4, async_save=False)
    trainer = fit(tmp_path, 8, checkpointing=checkpointing, hooks=[GoBack(), recorder])
    assert trainer.step == 8 and trainer.checkpoints.steps() == [4, 8]
    logged = [r["step"] for r in read_jsonl(tmp_path) if "train/loss" in r]
    assert logged == [2, 4, 6, 6, 8]  # steps 5 and 6 ran twice, from checkpoint 4


def test_a_nonfinite_policy_without_the_steps_guard_is_explained(tmp_path):
    trainer = Trainer(
        4, run_dir=tmp_path, hooks=default_hooks(on_nonfinite="rollback", progress="off", plot=False),
        step=StepSettings(on_nonfinite="skip"), loggers=["jsonl"],
    )  # fmt: skip
    with pytest.raises(ArgumentError, match=r"StepSettings\(on_nonfinite='rollback'\)"):
        trainer.fit(Regression(), RegressionData(), optax.adam(0.1))
