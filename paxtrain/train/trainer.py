"""`Trainer`: the training loop. Everything optional is a hook (see `hooks.py`)."""

from __future__ import annotations

import contextlib
import difflib
import errno
import pathlib
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

import paxtrain as pax
from paxtrain import parallel
from paxtrain.data.source import DataSource, Prefetcher
from paxtrain.errors import ArgumentError, CheckpointError, ConfigError
from paxtrain.train.builtin_hooks import default_hooks
from paxtrain.train.compile_cache import AUTO as AUTO_CACHE
from paxtrain.train.compile_cache import enable_compile_cache
from paxtrain.train.dispatch import HookList
from paxtrain.train.gradients import check_micro_batches
from paxtrain.train.hooks import Hook, PlotCurves, as_hook, check_at_least_one
from paxtrain.train.logger import DEFAULT_LOGGERS, Logger, LoggerGroup, check_loggers
from paxtrain.train.nonfinite import data_position, rolled_back
from paxtrain.train.pauses import pause
from paxtrain.train.precision import check_backend
from paxtrain.train.preemption import (
    DEFAULT_PREEMPTION_SIGNALS,
    raise_if_signalled,
    stop_on_signals,
)
from paxtrain.train.run_lock import RunLock
from paxtrain.train.settings import DEFAULT_LAYOUT, DEFAULT_STEP, Layout, StepSettings
from paxtrain.train.view import TrainerViewOf

if TYPE_CHECKING:
    from paxtrain.checkpoint.store import CheckpointManager

NO_LOSS_MSG = """\
{cls} has no `loss(batch)` method, and no `loss_fn` was given to `fit`.
Define `def loss(self, batch) -> (loss, metrics_dict)` on the model, or pass
`loss_fn(model, batch) -> (loss, (model, metrics_dict))`."""

NO_ROLLBACK_CHECKPOINTS_MSG = """\
on_nonfinite="rollback" needs checkpoints to roll back to: pass `checkpointing=Checkpointing(...)`
(or keep `trainer.checkpoint.enabled=true`), or use on_nonfinite="skip" or "stop"."""

ROLLBACK_BEFORE_FIRST_SAVE_MSG = """\
A non-finite step before step {step} asked for a rollback (on_nonfinite="rollback"), but no \
checkpoint has been saved yet to roll back to. Save earlier (`trainer.checkpoint.every_steps`), \
lower the learning rate, or use on_nonfinite="skip"."""

UNKNOWN_MONITOR_MSG = (
    "{owner} monitors `{monitor}`, but evaluation reports {available}.{hint} "
    "Set `{key}` to one of these."
)

DISK_FULL_MSG = (
    "Writing the run's files failed: {error}. Training stops here; the last complete "
    "checkpoint ({last}) is intact. Free disk space, then resume."
)

NOTHING_TO_TRAIN_MSG = (
    "nothing to train: the checkpoint is at step {step} and trainer.max_steps is {max_steps}; "
    "raise `trainer.max_steps` to train further."
)

STEPS_PER_CALL_MSG = "max_steps ({max_steps}) must be a multiple of steps_per_call ({spc})."

RESUME_STEPS_PER_CALL_MSG = (
    "the checkpoint in {directory} is at step {step}, not a multiple of trainer.steps_per_call "
    "({spc}): its calls would end at other steps than the log, checkpoint and last steps "
    "(past trainer.max_steps={max_steps}). Resume with a trainer.steps_per_call that divides "
    "{step} (1 always does)."
)

SIGNAL_NAME_MSG = (
    "`preemption_signals` names {name!r}, not a signal this process can catch: use signal names "
    "such as {example} (SIGKILL and SIGSTOP cannot be caught), e.g. `preemption_signals=[SIGTERM]`."
)

# Signals that no handler can catch: the kernel stops or kills the process itself.
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def check_signal_names(names: Iterable[str]) -> tuple[str, ...]:
    """`names` as a tuple, each the name of a signal this process can catch (`SIGTERM`).

    Example:
        >>> check_signal_names(["SIGTERM", "SIGUSR1"])
        ('SIGTERM', 'SIGUSR1')
        >>> check_signal_names(["SIGFOO"])
        Traceback (most recent call last):
        paxtrain.errors.ArgumentError: `preemption_signals` names 'SIGFOO', not a signal ...
    """
    names = tuple(names)
    for name in names:
        if name not in signal.Signals.__members__ or name in _UNCATCHABLE:
            example = ", ".join(DEFAULT_PREEMPTION_SIGNALS)
            raise ArgumentError(
                "preemption_signals", SIGNAL_NAME_MSG.format(name=name, example=example)
            )
    return names


TWO_STORES_MSG = (
    "two hooks save checkpoints ({first} and {second}): a run has one checkpoint store; "
    "keep one `Checkpointing` hook."
)


def model_loss(model: pax.Module, batch: Any) -> tuple[jax.Array, tuple[pax.Module, dict]]:
    """The default `loss_fn`: calls `model.loss(batch)` through `module_and_value`, under the
    model's mixed-precision policy (`pax.with_mp_policy`).

    `model.loss` may update states (BatchNorm statistics, dropout keys); they are kept.

    Example:
        >>> loss, (model, metrics) = model_loss(model, batch)  # doctest: +SKIP
    """
    model, (loss, metrics) = pax.purecall(pax.with_mp_policy(model.loss), batch)
    return loss, (model, metrics)


def model_eval(model: pax.Module, batch: Any) -> dict[str, jax.Array]:
    """The default `eval_fn`: `model.evaluate(batch)` if defined, else `model.loss(batch)`'s
    metrics plus the loss. The model is already in eval mode; state changes are dropped.

    Example:
        >>> metrics = model_eval(model.eval(), batch)  # doctest: +SKIP
    """
    if hasattr(model, "evaluate"):
        return pax.purecall(pax.with_mp_policy(model.evaluate), batch)[1]
    _, (loss, metrics) = pax.purecall(pax.with_mp_policy(model.loss), batch)
    return {**metrics, "loss": loss}


def _leading_dim(batch: Any) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    return int(np.shape(leaves[0])[0]) if leaves else 0


def weighted_mean(per_batch: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, float]:
    """The mean of each metric over examples, from `(examples, metrics)` of each batch.

    A batch's metrics are means over its examples, so they are weighted by its example count:
    the result equals the metric computed over all examples at once, whatever the batch sizes.

    Example:
        >>> weighted_mean([(4, {"accuracy": 1.0}), (1, {"accuracy": 0.0})])
        {'accuracy': 0.8}
    """
    total = sum(count for count, _ in per_batch)
    if not total:
        return {}
    keys = per_batch[0][1].keys()
    return {
        key: float(sum(count * np.mean(m[key], dtype=np.float64) for count, m in per_batch) / total)
        for key in keys
    }


class Trainer:
    """Trains a module on a `DataSource` with an optimizer; hooks do everything optional.

    Args:
      max_steps: number of optimizer steps.
      run_dir: where metrics, event files, plots and checkpoints go (created if missing).
      hooks: the run's hooks; None: `default_hooks()` (training metrics every 50 steps, a
        final evaluation, progress, the plot). Build them with `default_hooks(...)`, which
        takes the logging and evaluation cadence, early stopping and checkpointing.
      step: how each step runs (`StepSettings`: steps per call, gradient accumulation,
        precision, EMA, the non-finite guard, the gradient norm).
      layout: where it runs (`Layout`: the mesh, the parallel strategy, the tensor rules).
      seed: seed of the training RNG (dropout keys...).
      loggers: where logged scalars go: names from `train.logger.LOGGERS` ("tensorboard",
        "jsonl", "mlflow", "wandb") or `Logger` objects; only the main process logs.
      hyperparams: recorded by each logger at the start (`paxtrain fit`: the resolved config).
      compile_cache: JAX's persistent compilation cache directory; "auto" (a user cache
        directory), a path, or None (JAX's setting as it is); see `train.compile_cache`.
      preemption_signals: signal names that stop training gracefully.
      init_from: `init_from(model) -> model` replaces parameters of the built model before the
        state is made from it: fine-tuning's `functools.partial(load_parameters, source=...)`.

    Example:
        >>> from paxtrain.train import Trainer, default_hooks
        >>> trainer = Trainer(1000, run_dir="runs/demo", hooks=default_hooks(eval_every=200))
        >>> trainer.max_steps, trainer.steps_per_call
        (1000, 1)
    """

    def __init__(
        self,
        max_steps: int,
        *,
        run_dir: str | pathlib.Path = "runs/default",
        hooks: Iterable[Hook] | None = None,
        step: StepSettings = DEFAULT_STEP,
        layout: Layout = DEFAULT_LAYOUT,
        seed: int = 0,
        loggers: Iterable[str | Logger] = DEFAULT_LOGGERS,
        hyperparams: Mapping[str, Any] | None = None,
        compile_cache: str | None = AUTO_CACHE,
        preemption_signals: Iterable[str] = DEFAULT_PREEMPTION_SIGNALS,
        init_from: Callable[[pax.Module], pax.Module] | None = None,
    ):
        check_at_least_one("max_steps", max_steps, 1000)
        if max_steps % step.steps_per_call:
            raise ArgumentError(
                "max_steps",
                STEPS_PER_CALL_MSG.format(max_steps=max_steps, spc=step.steps_per_call),
            )
        self.max_steps, self.steps_per_call = max_steps, step.steps_per_call
        self.run_dir = pathlib.Path(run_dir)
        self.step_settings, self.layout = step, layout
        self.seed, self.init_from = seed, init_from
        self.loggers = list(loggers)
        self.hyperparams = dict(hyperparams or {})
        self.compile_cache = compile_cache
        self.preemption_signals = check_signal_names(preemption_signals)
        self.hooks = HookList(default_hooks() if hooks is None else hooks)
        check_loggers(self.loggers, plots=any(isinstance(h, PlotCurves) for h in self.hooks))
        self.view = TrainerViewOf(self)
        self.is_main_process = parallel.is_main_process()
        # The store the checkpointing hook opens at `fit`; resume and rollback read from it.
        self.checkpoints: CheckpointManager | None = None
        self.resumed_from: int | None = None
        self.step = 0
        self.should_stop = False
        self.stop_reason: str | None = None
        self.preempted: str | None = None
        self.stopped_on_nonfinite = False
        self.nothing_to_train = False  # resumed at or past max_steps, or early-stopped
        self.hurry = False  # a repeated stop signal: exit as soon as the checkpoint is saved
        self.last_data_wait = 0.0
        self.eval_history: list[tuple[int, dict[str, float]]] = []
        self._scalars: dict[str, float] = {}
        self._restart = False
        self._flat_treedef: Any = None

    # ----------------------------------------------------------------------- for hooks
    @property
    def state(self) -> Any:
        """The `TrainState`: laid out on the mesh, or one copy of it for the "pmap" strategy.

        Assigning a state (a restored checkpoint, new extras) lays it out for the step. The
        loop keeps the state as its leaves; reading this property builds the module tree.

        Example:
            >>> params = trainer.state.model.parameters()  # doctest: +SKIP
        """
        return self.plan.unreplicate(jax.tree_util.tree_unflatten(self._treedef, self._leaves))

    @state.setter
    def state(self, state: Any) -> None:
        self._leaves, self._treedef = jax.tree_util.tree_flatten(self.plan.place(state))

    @property
    def checkpoint_state(self) -> Any:
        """The state as checkpoints save it and restore into it (`plan.checkpoint_state`):
        `state`, but for "pmap" global arrays that every process's devices hold, so that
        several processes can save them together. Assign restored states to `state`.

        Example:
            >>> manager.save(trainer.checkpoint_state)  # doctest: +SKIP
        """
        return self.plan.checkpoint_state(jax.tree_util.tree_unflatten(self._treedef, self._leaves))

    def add_hook(self, hook: Hook | Callable[[Any, Any], Any], every: int | None = None) -> None:
        """Adds a hook, or a function `fn(view, metrics)` run every `every` steps (`view`: the
        trainer as hooks see it, `hooks.TrainerView`).

        Example:
            >>> trainer.add_hook(lambda view, metrics: print(view.step), every=100)  # doctest: +SKIP
        """
        self.hooks.add(as_hook(hook, every))

    def log(self, scalars: dict[str, float]) -> None:
        """Records scalars for the current step; written once all hooks of the step ran."""
        self._scalars.update(scalars)

    def stop(self, reason: str, *, nonfinite: bool = False) -> None:
        """Asks the loop to stop after the current step; `nonfinite`: because of non-finite
        steps (`stopped_on_nonfinite`, exit code 3 on the command line).

        Example:
            >>> trainer = Trainer(10)
            >>> trainer.stop("enough"); trainer.should_stop, trainer.stop_reason
            (True, 'enough')
        """
        self.should_stop, self.stop_reason = True, reason
        self.stopped_on_nonfinite = self.stopped_on_nonfinite or nonfinite

    def preempt(self, name: str) -> None:
        """Records that signal `name` asked the run to stop; the first one is kept.

        Example:
            >>> trainer = Trainer(10)
            >>> trainer.preempt("SIGTERM"); trainer.preempt("SIGINT"); trainer.preempted
            'SIGTERM'
        """
        self.preempted = self.preempted or name

    def hurry_up(self) -> None:
        """A repeated stop signal: the end-of-training hooks skip what comes after the save.

        Example:
            >>> trainer = Trainer(10)
            >>> trainer.hurry_up(); trainer.hurry
            True
        """
        self.hurry = True

    def eval_metrics(self) -> dict[str, float]:
        """The eval metrics of the current state over `data.eval_batches()`, or {} when a
        preemption interrupts them. Logs nothing.

        Each batch's metrics count in proportion to its examples (`weighted_mean`), so a
        ragged last batch counts exactly: the result is the metric over all eval examples.

        Example:
            >>> trainer.eval_metrics()["loss"]  # doctest: +SKIP
        """
        per_batch = []
        state = self.state
        for batch in self.data.eval_batches():
            if self.preempted:
                return {}
            metrics = self._eval_step(state, self.plan.put_eval_batch(batch))
            per_batch.append((_leading_dim(batch), metrics))
        return weighted_mean(jax.device_get(per_batch))

    def evaluate(self) -> dict[str, float]:
        """Evaluates (`eval_metrics`), logs the metrics as `eval/*` and runs `on_eval_end` hooks.

        Example:
            >>> trainer.evaluate()["loss"]  # doctest: +SKIP
        """
        with pause():  # not step time: the watchdog's clock stops, MFU leaves it out
            metrics = self.eval_metrics()
        if not metrics:
            return metrics
        self.eval_history.append((self.step, metrics))
        self.log({f"eval/{k}": v for k, v in metrics.items()})
        self._run_hooks("on_eval_end", metrics)
        return metrics

    # ------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, meta: Mapping[str, Any], wait: bool = False) -> None:
        """Saves the state into the checkpoint store (synchronously with `wait`), with this
        step's eval metrics (for `keep_best`), the batch position the run goes on from, the
        hooks' states and `meta`.

        Example:
            >>> trainer.save_checkpoint({"note": "before the change"}, wait=True)  # doctest: +SKIP
        """
        # No copy of the state: Orbax copies every array to host memory before `save` returns
        # (only the writing is in the background), so the next step may donate the buffers.
        evaluated = self.eval_history and self.eval_history[-1][0] == self.step
        metrics = (
            {f"eval/{k}": v for k, v in self.eval_history[-1][1].items()} if evaluated else None
        )
        # The batch the run goes on from: a rollback skips batches.
        position = data_position(self.state, self.step)
        record = {**meta, "data_position": position, "hooks": self.hooks.state_dicts()}
        with pause():
            self.checkpoints.save(self.checkpoint_state, metrics=metrics, meta=record, wait=wait)

    def restore_latest(self) -> Any:
        """The `TrainState` of the newest checkpoint (after the saves in flight), laid out as
        the trainer's; the trainer goes on with its own state until `continue_from`. A
        non-finite policy restores it, adjusts it, and continues from it.

        Raises `CheckpointError` when none is saved yet (or with no checkpointing).

        Example:
            >>> state = trainer.restore_latest()  # doctest: +SKIP
            >>> trainer.continue_from(state)  # doctest: +SKIP
        """
        with pause():
            return self._restore_newest()[0]

    def continue_from(self, state: Any) -> None:
        """Trains on from `state` at its step: the scalars logged so far are written at the
        step they belong to, then the loop restarts its batches from `state.step` (plus the
        batches a rollback skips, recorded in the state's extras).

        Example:
            >>> trainer.continue_from(trainer.restore_latest())  # doctest: +SKIP
        """
        self._write_scalars()
        self.state = state
        self.step = int(state.step)
        self._restart = True

    def rollback(self, lr_factor: float) -> int:
        """Restores the newest checkpoint, skips the batches since then, scales the updates
        (the learning rate) by `lr_factor`; returns the step trained from again.

        Needs checkpointing and a step built with `rollback=True` (`on_nonfinite="rollback"`).
        """
        current = self.state
        self.continue_from(rolled_back(current, self.restore_latest(), self.step, lr_factor))
        return self.step

    def _restore_newest(self) -> tuple[Any, dict[str, Any]]:
        """The newest checkpoint's state and meta: the one road in for resume and rollback."""
        if self.checkpoints is None:
            raise CheckpointError(NO_ROLLBACK_CHECKPOINTS_MSG)
        self.checkpoints.wait()
        if self.checkpoints.latest_step() is None:
            raise CheckpointError(ROLLBACK_BEFORE_FIRST_SAVE_MSG.format(step=self.step))
        return self.checkpoints.restore(self.checkpoint_state)

    def _open_checkpoints(self) -> bool:
        """Opens the store of the hook that saves checkpoints; whether to resume from it."""
        stores = [(h, h.open_checkpoints(self.run_dir)) for h in self.hooks]
        stores = [(h, s) for h, s in stores if s is not None]
        if len(stores) > 1:
            names = [type(h).__name__ for h, _ in stores]
            raise ArgumentError("hooks", TWO_STORES_MSG.format(first=names[0], second=names[1]))
        self.checkpoints = stores[0][1].manager if stores else None
        self._restart_allowed = bool(stores) and stores[0][1].restart
        return bool(stores) and stores[0][1].resume

    def _resume(self) -> None:
        """Restores the newest readable checkpoint and the hooks' states, if there is one
        (`CheckpointManager.resume`: refuses to start over a run whose checkpoints are all
        unreadable or moved aside, unless the store says `restart`)."""
        try:
            restored = self.checkpoints.resume(self.checkpoint_state, restart=self._restart_allowed)
        except BaseException:
            self.checkpoints.close()
            raise
        if restored is None:
            return
        state, meta = restored
        self.state, self.step = state, int(state.step)
        if self.step % self.steps_per_call:  # saved by a run with other steps_per_call
            self.checkpoints.close()
            raise ConfigError(
                RESUME_STEPS_PER_CALL_MSG.format(
                    directory=self.checkpoints.directory, step=self.step,
                    spc=self.steps_per_call, max_steps=self.max_steps,
                )
            )  # fmt: skip
        self.hooks.load_state_dicts(meta.get("hooks", {}))
        self.resumed_from = self.step
        if self.is_main_process:
            print(
                f"paxtrain: resumed from {self.checkpoints.directory} at step {self.step}",
                flush=True,
            )

    # ----------------------------------------------------------------------------- loop
    def prepare(
        self,
        model: pax.Module | Callable[[], pax.Module],
        data: DataSource,
        optimizer: Any,
        loss_fn: Callable | None = None,
        eval_fn: Callable | None = None,
    ) -> None:
        """Builds the state and the compiled steps without training (`fit` calls it).

        Useful on its own to evaluate a checkpoint: `prepare(...)`, `restore(...)`, `evaluate()`.
        `model` may be a function that builds it: the state is then built under `jax.jit` with
        the layout's shardings, so no device ever holds all of it (FSDP's point); its keys come
        from pax's global key seeded with the trainer's `seed`.
        The trainer's `init_from` then gets the abstract model laid out as the state will be
        (`parallel.laid_out`), so what it reads goes straight into each device's shards.
        """
        from paxtrain.train.step import make_eval_step, make_train_step

        if self.step_settings.on_nonfinite == "rollback" and not any(
            type(hook).open_checkpoints is not Hook.open_checkpoints for hook in self.hooks
        ):  # refused at the start, not at the first non-finite step hours later
            raise CheckpointError(NO_ROLLBACK_CHECKPOINTS_MSG)
        enable_compile_cache(self.compile_cache)  # before the first compilation
        # A function that builds the model: the state is built sharded (`parallel.build_sharded`).
        factory = model if callable(model) and not isinstance(model, pax.Module) else None
        if factory is not None:
            model = jax.eval_shape(parallel.seeded(factory, self.seed))
        if loss_fn is None and not hasattr(model, "loss"):
            raise TypeError(NO_LOSS_MSG.format(cls=type(model).__name__))
        self.data = data
        loss_fn = loss_fn or model_loss
        self._loss_fn, self._model_info = loss_fn, None
        # Before anything compiles: a float16 policy the backend cannot run is a config error.
        # Read once: past this first whole batch, each process reads only its own rows.
        first_batch = data.train_batch(0)
        check_backend(self.step_settings.policy, model, first_batch, loss_fn)
        options = self.step_settings.step_options()
        state = self._build_state(model, factory, optimizer, make_train_step(loss_fn, **options))
        raise_if_signalled()  # the state's build may take minutes: a signal ends it here
        self._train_step = make_train_step(loss_fn, **options, **self.plan.step_kwargs)
        # With an EMA, its metrics too (`eval/ema_loss`...): what it is kept for.
        ema = self.step_settings.ema_decay is not None
        self._eval_step = make_eval_step(
            eval_fn or model_eval, also_ema=ema, compile_step=self.plan.compile_eval_step
        )
        self.state = state
        self.step = int(state.step)
        self._check_data(data, first_batch)
        self._check_monitors(state)

    def _build_state(
        self, model: Any, factory: Callable | None, optimizer: Any, uncompiled: Any
    ) -> Any:
        """The initial `TrainState` and the layout `self.plan` for it.

        The state has the options' extras (from the uncompiled step's `init`), so it has the
        structure that checkpoints record: the layout depends on that structure and the
        compiled step on the layout.
        """
        build = self._state_builder(optimizer, uncompiled)
        mesh = self.layout.make_mesh()

        def plan_for(state: Any) -> parallel.ParallelStrategy:
            return self._plan_for(state, mesh)

        if factory is None:
            state = build(model if self.init_from is None else self.init_from(model))
            self.plan = plan_for(state)
            return state

        def build_with(loaded: Mapping[int, jax.Array] | None = None) -> Any:
            return build(parallel.with_leaves(factory(), loaded or {}))

        def load(plan: parallel.ParallelStrategy) -> tuple[dict[int, jax.Array]]:
            shardings = None if plan.state_shardings is None else plan.state_shardings.model
            abstract = parallel.laid_out(model, shardings)
            return (parallel.arrays_by_leaf(self.init_from(abstract)),)

        state, self.plan = parallel.build_sharded(
            build_with, self.seed, plan_for, load=None if self.init_from is None else load
        )
        return state

    def _state_builder(self, optimizer: Any, uncompiled: Any) -> Callable[[Any], Any]:
        """`build(model) -> TrainState`: the model under the precision policy, its optimizer
        state and the step options' states."""
        from paxtrain.train.state import TrainState

        policy = self.step_settings.policy

        def build(model: pax.Module) -> Any:
            if policy is not None:
                model = pax.apply_mp_policy(model, policy)
            return uncompiled.init(TrainState.create(model, optimizer, seed=self.seed))

        return build

    def _plan_for(self, state: Any, mesh: Any) -> parallel.ParallelStrategy:
        """The layout's strategy for `state` (abstract or not) on `mesh`."""
        return parallel.setup(
            state,
            self.layout.strategy,
            mesh,
            batch_axis=int(self.steps_per_call > 1),
            tensor_rules=tuple(self.layout.tensor_rules),
        )

    def summary(
        self,
        model: pax.Module | Callable[[], pax.Module],
        data: DataSource,
        optimizer: Any,
        loss_fn: Callable | None = None,
    ) -> Any:
        """What `fit` would train and what it needs, without allocating the state or running a
        step: parameter counts by module, bytes per device of the laid-out state, the compiled
        step's memory, the model FLOPs and whether it fits (`telemetry.summary.Summary`).

        Example:
            >>> print(Trainer(10).summary(make_model, data, optax.adam(1e-3)))  # doctest: +SKIP
        """
        from paxtrain.telemetry.summary import summarize
        from paxtrain.train.step import make_train_step

        loss_fn = loss_fn or model_loss
        if callable(model) and not isinstance(model, pax.Module):  # built abstractly
            model = jax.eval_shape(parallel.seeded(model, self.seed))
        options = self.step_settings.step_options()
        build = self._state_builder(optimizer, make_train_step(loss_fn, **options))
        abstract = jax.eval_shape(parallel.seeded(lambda: build(model), self.seed))
        plan = self._plan_for(abstract, self.layout.make_mesh())
        train_step = make_train_step(loss_fn, **options, **plan.step_kwargs)
        return summarize(abstract, plan, train_step, data, loss_fn, self.steps_per_call)

    @property
    def model_info(self) -> Any:
        """The model's parameter count, model FLOPs per step and compute dtype
        (`telemetry.model_info.ModelInfo`), worked out once, after `prepare`.

        Example:
            >>> trainer.model_info.flops_per_step  # doctest: +SKIP
            2.7e+10
        """
        if self._model_info is None:
            from paxtrain.telemetry.model_info import model_info

            self._model_info = model_info(
                self.state.model, self._loss_fn, self._batch_shapes,
                self.tokens_per_step, self.step_settings.policy,
            )  # fmt: skip
        return self._model_info

    def _check_data(self, data: DataSource, first_batch: Any) -> None:
        """Checks the first training and evaluation batches against the layout now, not as a
        traceback from the first compile (or the first evaluation hours later)."""
        from paxtrain.telemetry.flops import abstract_batch

        self._batch_shapes = abstract_batch(first_batch)  # for `model_info`, without a re-read
        self.plan.check_batch(first_batch)
        accumulate = self.step_settings.grad_accum_steps
        if accumulate > 1:
            try:
                check_micro_batches(first_batch, accumulate)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        first_eval = next(iter(data.eval_batches()), None)
        if first_eval is not None:
            self.plan.check_eval_batch(first_eval)
        self.examples_per_step = _leading_dim(first_batch)
        self.tokens_per_step = data.info.get("tokens_per_batch", 0)

    def _check_monitors(self, state: Any) -> None:
        """Checks the metrics that hooks monitor (`Hook.monitor`: early stopping, checkpoint
        ranking) against those evaluation reports, from shapes only (nothing is compiled)."""
        watching = [hook for hook in self.hooks if hook.monitor is not None]
        if not watching:
            return
        batch = next(iter(self.data.eval_batches()), None)
        if batch is None:  # no evaluation data: nothing to monitor, which the first eval says
            return
        names = sorted(jax.eval_shape(self._eval_step, state, batch))
        available = [f"eval/{k}" for k in names]
        for hook in watching:
            if hook.monitor.name not in names:
                close = difflib.get_close_matches(hook.monitor.key, available, 1)
                raise ConfigError(
                    UNKNOWN_MONITOR_MSG.format(
                        owner=type(hook).__name__, monitor=hook.monitor.key, available=available,
                        key=hook.monitor_setting, hint=f" Did you mean `{close[0]}`?" if close else "",
                    )
                )  # fmt: skip

    def fit(
        self,
        model: pax.Module | Callable[[], pax.Module],
        data: DataSource,
        optimizer: Any,
        loss_fn: Callable | None = None,
        eval_fn: Callable | None = None,
    ) -> Any:
        """Trains `model` on `data`; returns the final `TrainState`.

        Preemption signals (SIGTERM, SIGINT, SIGUSR1 by default) stop the loop after the
        current step; the end-of-training hooks still run (a checkpoint is saved when
        checkpointing is on) and `trainer.preempted` names the signal.

        Args:
          model: a module with `loss(batch) -> (loss, metrics)`, or any module with `loss_fn`;
            or a function that builds it, for a state built sharded (see `prepare`).
          data: a `DataSource` (step-indexed `train_batch(step)`, `eval_batches()`).
          optimizer: an optax `GradientTransformation` or a `paxtrain.optim.Optimizer`.
          loss_fn: `loss_fn(model, batch) -> (loss, (model, metrics))`; default `model_loss`.
          eval_fn: `eval_fn(model, batch) -> metrics`; default `model_eval`.
        """
        self.prepare(model, data, optimizer, loss_fn, eval_fn)
        raise_if_signalled()  # a signal during start-up: nothing to save, nothing written
        # One writer per run directory; taken once the config, data and model proved good.
        lock = RunLock(self.run_dir)
        if self.is_main_process:
            lock.acquire()
        self.logger: LoggerGroup | None = None
        try:
            with stop_on_signals(self.view, self.preemption_signals):
                self._resume_and_train()
        except BaseException as error:
            # A full disk fails the logs' last flush too: the error on its way names the cause.
            with contextlib.suppress(OSError):
                if self.logger is not None:
                    self.logger.close()
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                last = self.checkpoints.latest_step() if self.checkpoints else None
                raise CheckpointError(
                    DISK_FULL_MSG.format(
                        error=error, last=f"step {last}" if last is not None else "none yet"
                    )
                ) from None
            raise
        else:
            self.logger.close()
        finally:
            lock.release()
        return self.state

    def _resume_and_train(self) -> None:
        if self._open_checkpoints():
            self._resume()  # before any log is opened: a refused restore writes nothing
        # Only the main process writes; the others run the same loop and the collective saves.
        self.logger = LoggerGroup(
            self.loggers if self.is_main_process else [], self.run_dir, self.hyperparams
        )
        reason = self._why_nothing_to_train()
        if reason:
            self.nothing_to_train = True
            self.stop(reason)
        else:
            self._run_hooks("on_train_start")
            self._loop()
            if self.preempted:  # the step the loop ended at, not the one the signal came in
                self.stop_reason = f"preempted by {self.preempted} at step {self.step}"
            self._run_hooks("on_train_end")
        if self.checkpoints is not None:  # after the final save, which waits for the write
            self.checkpoints.close()

    def _why_nothing_to_train(self) -> str | None:
        """Why a resumed run is already done: at max_steps, or ended by a hook (its early
        stopping's patience used up)."""
        if self.resumed_from is None:
            return None
        if self.step >= self.max_steps:
            return NOTHING_TO_TRAIN_MSG.format(step=self.step, max_steps=self.max_steps)
        return next(filter(None, (hook.nothing_left(self.step) for hook in self.hooks)), None)

    def _loop(self) -> None:
        group = self.steps_per_call if self.steps_per_call > 1 else None
        while self.step < self.max_steps and not self.should_stop:
            self._restart = False
            # Batches are indexed by step plus the batches a rollback skipped.
            first = data_position(self.state, self.step)
            # Each process reads and places only its own devices' rows of each batch.
            rows = self.plan.process_rows(self.data, self.examples_per_step)
            with Prefetcher(rows, first, group=group, put=rows.place) as batches:
                while self.step < self.max_steps and not (self.should_stop or self._restart):
                    started = time.perf_counter()
                    batch = next(batches)
                    self.last_data_wait = time.perf_counter() - started
                    with self.trace_step():
                        metrics = self.run_step(batch)
                    self.step += self.steps_per_call
                    self.hooks.step_taken(self.view, metrics)
                    self._write_scalars()

    def trace_step(self) -> contextlib.AbstractContextManager:
        """The context the next step call runs in: those the hooks give (`Hook.step_context`:
        a profiler's step annotation), else a `nullcontext`.

        Example:
            >>> trainer = Trainer(10)
            >>> type(trainer.trace_step()).__name__
            'nullcontext'
        """
        contexts = [c for h in self.hooks if (c := h.step_context(self.view)) is not None]
        if not contexts:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for context in contexts:
            stack.enter_context(context)
        return stack

    def run_step(self, batch: Any) -> dict[str, jax.Array]:
        """Runs the compiled step on a placed batch, as the loop does; returns its metrics.

        The state stays flat (its leaves): no module of it is rebuilt on the host per step, which
        is most of a small step's host time. `trainer.state` builds it when read.

        Example:
            >>> metrics = trainer.run_step(trainer.plan.put_batch(batch))  # doctest: +SKIP
        """
        if self._treedef is not self._flat_treedef:  # first call, or `state` was assigned
            self._flat_treedef = self._treedef
            self._flat_step = self._train_step.flat(self._treedef)
        self._leaves, metrics = self._flat_step(self._leaves, batch)
        return metrics

    def _run_hooks(self, event: str, *args: Any) -> None:
        self.hooks.run(event, self.view, *args)
        self._write_scalars()

    def _write_scalars(self) -> None:
        if self._scalars:
            scalars, self._scalars = self._scalars, {}
            self.logger.write(self.step, scalars)
            self.hooks.run("on_log", self.view, scalars)
