"""Non-finite steps, in one place: the guard that skips them, the rollback that goes back to a
checkpoint, and the policy that decides between skipping, rolling back and stopping.

- `skip_nonfinite`: a step option; a step whose loss or gradient norm is NaN/Inf leaves the state
  as it was, counted in its `SkipNonFiniteState` (the metric `skipped_steps`).
- `rollback_support`: a step option keeping what a rollback changes (`RollbackState`: a factor
  on the updates, and the batches skipped); `rolled_back` is a rollback's arithmetic and
  `data_position` the batch a state trains on next.
- `NonFinitePolicy`: the trainer's hook acting on skipped steps ("skip", "stop", "rollback");
  a run it stopped exits `paxtrain fit` with `NONFINITE_EXIT_CODE`.

Example:
    >>> guard_by_select()  # on a CPU: the guard branches
    False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import paxtrain as pax
from paxtrain.errors import ArgumentError
from paxtrain.train.gradients import Batch, Metrics
from paxtrain.train.hooks import Hook, check_at_least_one
from paxtrain.train.options import StepFn, StepOption, UpdateFn
from paxtrain.train.state import TrainState

if TYPE_CHECKING:
    from paxtrain.train.view import TrainerView


def is_finite(metrics: Metrics) -> jax.Array:
    """Whether the loss and the gradients of a step are finite (all of them, from their norm).

    Example:
        >>> bool(is_finite({"loss": jnp.array(1.0), "grad_norm": jnp.array(jnp.inf)}))
        False
    """
    return jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])


def guard_by_select() -> bool:
    """Whether the non-finite guard selects (`jnp.where`) rather than branches (`lax.cond`) on
    the default backend: on GPUs.

    XLA's GPU runtime reads a conditional's predicate back to the host and waits for it (its
    `ConditionalThunk` copies it from the device, then blocks until the stream is done), so a
    branch stalls the launch of the rest of the step every step; there a select fuses into the
    optimizer's elementwise update. XLA:CPU fuses that select less well (it copies the
    optimizer's moments: 1.46x raw JAX's bytes accessed for a small MLP, against 1.03x with the
    branch), and TPUs branch on the device.

    Example:
        >>> guard_by_select()  # on a CPU
        False
    """
    return jax.default_backend() == "gpu"


class SkipNonFiniteState(NamedTuple):
    """The state of `skip_nonfinite`: how many steps it skipped."""

    skipped_steps: jax.Array


SKIP = "skip_nonfinite"


def skip_nonfinite(select: bool | None = None) -> StepOption:
    """Steps whose loss or gradient norm is NaN/Inf leave the state as it was.

    On such a step the model (its states included), the optimizer and the states of the options
    inside this one (e.g. the EMA) are kept; only `state.step` and `state.rng` advance. A finite
    step does the unguarded step's work plus the gradient norm (computed once, shared with the
    `grad_norm` metric). Skipped steps are counted (`skipped_steps(state)`), also reported as
    the metric `skipped_steps`.

    Args:
      select: True keeps the updated or the old state with `jnp.where` after the update; False
        runs the update under `lax.cond`. Same results; None (the default) chooses per backend
        (`guard_by_select`: a select on GPUs, the branch elsewhere). `benchmarks/train_step.py`
        measures both.

    Example:
        >>> step = make_train_step(loss_fn, nonfinite_guard=True)  # doctest: +SKIP
        >>> step = make_train_step(loss_fn, nonfinite_guard=False,  # doctest: +SKIP
        ...                        options=[skip_nonfinite(select=True)])
    """

    def wrap_update(update: UpdateFn) -> UpdateFn:
        def guarded(state: TrainState, model: pax.Module, grads: Any, metrics: Metrics):
            def skip() -> TrainState:
                skipped = state.extras[SKIP].skipped_steps + 1
                return state.with_extras(**{SKIP: SkipNonFiniteState(skipped)})

            finite = is_finite(metrics)
            if guard_by_select() if select is None else select:
                kept = jax.tree_util.tree_map(
                    lambda new, old: jnp.where(finite, new, old),
                    update(state, model, grads, metrics),
                    skip(),
                )
                return kept
            return jax.lax.cond(finite, lambda: update(state, model, grads, metrics), skip)

        return guarded

    def wrap(step: StepFn) -> StepFn:
        def reported(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            return new, {**metrics, "skipped_steps": new.extras[SKIP].skipped_steps}

        return reported

    return StepOption(
        SKIP, lambda state: SkipNonFiniteState(jnp.array(0, jnp.int32)), wrap, wrap_update
    )


def skipped_steps(state: TrainState) -> jax.Array:
    """The steps `state`'s guard skipped; 0 without the guard.

    Example:
        >>> int(skipped_steps(TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1))))
        0
    """
    return state.extras[SKIP].skipped_steps if SKIP in state.extras else jnp.array(0, jnp.int32)


class RollbackState(NamedTuple):
    """The state of `rollback_support`: a factor on every parameter update, and how many batches
    of the stream rollbacks skipped."""

    update_scale: jax.Array
    data_offset: jax.Array


ROLLBACK = "rollback"


def rollback_support() -> StepOption:
    """Keeps what a rollback after non-finite steps changes (a `RollbackState`): the update
    scale, a factor on every parameter update (lowering it lowers the learning rate of any
    optimizer whose last transformation scales by the learning rate), and the data offset, how
    many batches of the stream were skipped, which the trainer adds to the step to pick batches
    (`data_position`). The reported `learning_rate` is the optimizer's times the scale: the
    rate of the update made.

    Example:
        >>> step = make_train_step(loss_fn, options=[rollback_support()])  # doctest: +SKIP
    """

    def wrap_update(update: UpdateFn) -> UpdateFn:
        def scaled(state: TrainState, model: pax.Module, grads: Any, metrics: Metrics):
            new = update(state, model, grads, metrics)
            scale = state.extras[ROLLBACK].update_scale

            def scale_update(old: jax.Array, updated: jax.Array) -> jax.Array:
                # At scale 1 the update itself: `old + 1 * (updated - old)` rounds otherwise, so
                # turning rollbacks on would change every run, one that never rolls back too.
                # In the parameters' dtype (the float32 scale would promote bfloat16 ones).
                scaled = (old + scale * (updated - old)).astype(updated.dtype)
                return jnp.where(scale == 1, updated, scaled)

            params = jax.tree_util.tree_map(
                scale_update, pax.select_parameters(state.model), pax.select_parameters(new.model)
            )
            return new.replace(model=pax.update_parameters(new.model, params))

        return scaled

    def wrap(step: StepFn) -> StepFn:
        def reported(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            if "learning_rate" in metrics:  # the rate the update was made with
                rate = metrics["learning_rate"] * state.extras[ROLLBACK].update_scale
                metrics = {**metrics, "learning_rate": rate}
            return new, metrics

        return reported

    def init(state: TrainState) -> RollbackState:
        return RollbackState(jnp.array(1.0, jnp.float32), jnp.array(0, jnp.int32))

    return StepOption(ROLLBACK, init, wrap, wrap_update)


def guard_kwargs(action: str) -> dict[str, bool]:
    """The `make_train_step` arguments of an `on_nonfinite` action: the guard unless "none",
    and the rollback's state for "rollback".

    Example:
        >>> guard_kwargs("rollback")
        {'nonfinite_guard': True, 'rollback': True}
    """
    return {"nonfinite_guard": action != "none", "rollback": action == "rollback"}


def data_position(state: TrainState, step: int) -> int:
    """The index of the batch that `state` at `step` trains on next: the step plus the batches
    that rollbacks skipped (one host transfer with rollbacks on).

    Example:
        >>> data_position(TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1)), 7)
        7
    """
    return step + (int(state.extras[ROLLBACK].data_offset) if ROLLBACK in state.extras else 0)


def update_scale(state: TrainState) -> float:
    """The factor rollbacks put on `state`'s updates; 1 without rollbacks.

    Example:
        >>> update_scale(TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1)))
        1.0
    """
    return float(state.extras[ROLLBACK].update_scale) if ROLLBACK in state.extras else 1.0


def rolled_back(
    state: TrainState, restored: TrainState, bad_step: int, lr_factor: float
) -> TrainState:
    """`restored` (a checkpoint's state) set to go on after non-finite steps before `bad_step`:
    the batches up to `bad_step` skipped, the updates scaled by `lr_factor`.

    Counted from `state`'s rollback state, not the checkpoint's: a second rollback to the same
    checkpoint then skips the batches the first one went on with, and lowers the scale again,
    instead of reading them again at the same learning rate.

    Example:
        >>> state = TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1))
        >>> state = state.with_extras(rollback=rollback_support().init(state))
        >>> back = rolled_back(state, state, bad_step=5, lr_factor=0.5)
        >>> data_position(back, 0), update_scale(back)
        (5, 0.5)
    """
    current = state.extras[ROLLBACK]
    return restored.with_extras(
        **{
            ROLLBACK: RollbackState(
                update_scale=current.update_scale * lr_factor,
                data_offset=current.data_offset + (bad_step - int(restored.step)),
            )
        }
    )


POLICY_WITHOUT_GUARD_MSG = (
    "on_nonfinite={action!r} in the hooks (`default_hooks`) needs the same in the step: pass "
    "`step=StepSettings(on_nonfinite={action!r})` to the Trainer."
)
LR_FACTOR_MSG = (
    "rollback_lr_factor is {value}; the factor a rollback scales the learning rate by, "
    "rollback_lr_factor must be in (0, 1], e.g. rollback_lr_factor=0.5."
)

# The exit code of `paxtrain fit` stopped by on_nonfinite="stop": neither success (0) nor a
# config error (2), so a launcher can tell a diverged run from both.
NONFINITE_EXIT_CODE = 3


# Steps in a row the "skip" policy skips before it calls the run stuck: more than a float16
# loss scale needs to come down from 2**15 (one halving per skipped step).
STUCK_STEPS = 50
STUCK_MSG = (
    "every step from {start} to {step} was skipped (non-finite loss or gradients): the "
    "parameters are stuck where the loss is not finite; lower the learning rate, or train with "
    "`trainer.on_nonfinite=rollback`"
)


# The share of its steps a finished run may have skipped and still succeed: a float16 loss scale
# coming down from 2**15 skips a handful at the start. A run that skipped more learned from much
# less of its data than asked, or from none (labels outside the classes, NaN inputs), though no
# STUCK_STEPS of them came in a row: `paxtrain fit` then ends with NONFINITE_EXIT_CODE.
MAX_SKIPPED_FRACTION = 0.1
SKIPPED_TOO_MANY_MSG = (
    "{skipped} of the run's {steps} steps were skipped (non-finite loss or gradients), more than "
    "{limit:.0%}, so the run failed (exit code 3): lower the learning rate, look for NaN/Inf or "
    "out-of-range values in the data, or train with `trainer.on_nonfinite=rollback`."
)


def skipped_too_many(state: TrainState, step: int) -> str | None:
    """Why a run at `step` with `state` failed for the steps its guard skipped (more than
    `MAX_SKIPPED_FRACTION` of them), or None.

    Example:
        >>> skipped_too_many(TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1)), 10) is None
        True
    """
    skipped = int(skipped_steps(state))
    if step < 1 or skipped <= MAX_SKIPPED_FRACTION * step:
        return None
    return SKIPPED_TOO_MANY_MSG.format(skipped=skipped, steps=step, limit=MAX_SKIPPED_FRACTION)


# Rollbacks to one checkpoint, with no newer one saved in between, before the "rollback"
# policy gives up: each halves the learning rate (by default) and skips more batches, and
# non-finite steps that persist through that would make the run roll back forever.
ROLLBACKS_IN_A_ROW = 5
ROLLBACKS_EXHAUSTED_MSG = (
    "non-finite loss or gradients before step {bad_step} after {count} rollbacks in a row to "
    "step {step}: lowering the learning rate and skipping batches did not help; check the "
    "data and the model for NaN/Inf, or lower `optimizer.learning_rate`"
)


class NonFinitePolicy(Hook):
    """Acts on steps the non-finite guard skipped: "stop" training, or "rollback" (see
    `Trainer.rollback`; it stops after `ROLLBACKS_IN_A_ROW` to one checkpoint), or "skip" them
    and stop only when `STUCK_STEPS` steps in a row were skipped (the state is stuck where the
    loss is not finite: the rest of the run would be skipped too). Checks every `every` steps,
    one host transfer each time; what the checks saw is part of the hook's state.

    Example:
        >>> trainer.add_hook(NonFinitePolicy("stop", every=50))  # doctest: +SKIP
    """

    at_end = True

    def __init__(self, action: str, every: int, lr_factor: float = 0.5):
        if action not in ("skip", "stop", "rollback"):
            raise ArgumentError(
                "on_nonfinite",
                f"NonFinitePolicy action must be 'skip', 'stop' or 'rollback', got {action!r}",
            )
        if not 0 < lr_factor <= 1:  # 0 would stop training; above 1 each rollback speeds it up
            raise ArgumentError("rollback_lr_factor", LR_FACTOR_MSG.format(value=lr_factor))
        check_at_least_one("log_every", every, 50)
        self.action, self.every, self.lr_factor = action, every, lr_factor
        self._seen, self._checked_step, self._stuck_since = 0, 0, None
        self._restored: dict[str, Any] | None = None
        self._rolled_back_to, self._rollbacks_in_a_row = None, 0

    def state_dict(self) -> dict[str, Any]:
        # What the last check saw: a resumed run then calls a run stuck, or gives up rolling
        # back, at the step the uninterrupted run does.
        return {
            "seen": self._seen, "checked_step": self._checked_step,
            "stuck_since": self._stuck_since, "rolled_back_to": self._rolled_back_to,
            "rollbacks_in_a_row": self._rollbacks_in_a_row,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = state

    def on_train_start(self, view: TrainerView) -> None:
        # The policy acts on what the step's guard records; a step built without it (or
        # without a rollback's state) would fail at the first check with a KeyError.
        needs = (SKIP, ROLLBACK) if self.action == "rollback" else (SKIP,)
        if not all(name in view.state.extras for name in needs):
            raise ArgumentError("on_nonfinite", POLICY_WITHOUT_GUARD_MSG.format(action=self.action))
        if self._restored is not None:
            state, self._restored = self._restored, None
            self._seen, self._checked_step = state["seen"], state["checked_step"]
            self._stuck_since, self._rolled_back_to = state["stuck_since"], state["rolled_back_to"]
            self._rollbacks_in_a_row = state["rollbacks_in_a_row"]
            return
        self._seen = int(skipped_steps(view.state))
        self._checked_step, self._stuck_since = view.step, None

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        skipped = int(np.max(jax.device_get(metrics["skipped_steps"])))
        since, self._checked_step = self._checked_step, view.step
        if skipped <= self._seen:
            self._stuck_since = None
            return
        if self.action == "skip":
            every_one = skipped - self._seen >= view.step - since
            if not every_one or self._stuck_since is None:
                self._stuck_since = since if every_one else None
            if every_one and view.step - self._stuck_since >= STUCK_STEPS:
                view.stop(
                    STUCK_MSG.format(start=self._stuck_since + 1, step=view.step), nonfinite=True
                )
            self._seen = skipped
            return
        if self.action == "stop":
            view.stop(
                f"non-finite loss or gradients: {skipped - self._seen} step(s) skipped before "
                f"step {view.step}",
                nonfinite=True,
            )
            return
        bad_step = view.step
        manager = view.checkpoints
        if (
            manager is not None
            and self._rollbacks_in_a_row >= ROLLBACKS_IN_A_ROW
            and manager.latest_step() == self._rolled_back_to
        ):
            view.stop(
                ROLLBACKS_EXHAUSTED_MSG.format(
                    count=self._rollbacks_in_a_row, step=self._rolled_back_to, bad_step=bad_step
                ),
                nonfinite=True,
            )
            return
        step = view.rollback(self.lr_factor)
        self._rollbacks_in_a_row = 1 + (
            self._rollbacks_in_a_row if step == self._rolled_back_to else 0
        )
        self._rolled_back_to = step
        self._seen, self._checked_step = int(skipped_steps(view.state)), step
        scale = update_scale(view.state)
        view.log({"rollback/to_step": step, "rollback/update_scale": scale})
        print(
            f"paxtrain: non-finite steps before step {bad_step}: rolled back to step {step}, "
            f"skipping batches up to {bad_step}, learning rate x{scale:g}",
            flush=True,
        )
