"""`Trainer`: the training loop. Everything optional is a hook (see `hooks.py`)."""

from __future__ import annotations

import contextlib
import difflib
import errno
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

import paxtrain as pax
from paxtrain import parallel
from paxtrain.data.source import DataSource, Prefetcher
from paxtrain.errors import CheckpointError, ConfigError
from paxtrain.train.checkpointing import Checkpointing
from paxtrain.train.compile_cache import AUTO as AUTO_CACHE
from paxtrain.train.compile_cache import enable_compile_cache
from paxtrain.train.gradients import check_micro_batches
from paxtrain.train.hooks import (
    EarlyStopping,
    Evaluation,
    EveryN,
    Hook,
    NonFinitePolicy,
    PlotCurves,
    Throughput,
    TrainMetrics,
)
from paxtrain.train.logger import DEFAULT_LOGGERS, Logger, LoggerGroup
from paxtrain.train.precision import needs_loss_scale, parse_precision
from paxtrain.train.preemption import DEFAULT_PREEMPTION_SIGNALS, stop_on_signals
from paxtrain.train.progress import Progress
from paxtrain.train.run_lock import RunLock

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

EARLY_STOPPED_MSG = (
    "nothing to train: {reason} when the run saved step {step}; raise "
    "`trainer.early_stopping.patience` to train further."
)

STEPS_PER_CALL_MSG = "max_steps ({max_steps}) must be a multiple of steps_per_call ({spc})."


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
      run_dir: where metrics, event files and plots go (created if missing).
      log_every: steps between logged training metrics.
      eval_every: steps between evaluations (None: only at the end).
      steps_per_call: steps run per jitted call (a `lax.scan` over stacked batches).
      grad_accum_steps: micro-batches per step.
      precision: "float32"; "bfloat16" or "float16" for that compute with f32 parameters; or a
        policy string ("params=float32,compute=bfloat16,output=float32", see
        `train.precision`). Computing in float16 turns on dynamic loss scaling.
      ema_decay: keep an EMA of the parameters when set; evaluations then report its metrics
        too, as `eval/ema_*` (`eval/ema_loss`: a monitor for checkpoints or early stopping).
      on_nonfinite: what a step with a NaN/Inf loss or gradient does: "skip" it (counted in
        `train/skipped_steps`; after 50 skipped in a row training stops, stuck), "stop" training, or "rollback" to the newest checkpoint,
        skipping the batches since then and scaling the learning rate by `rollback_lr_factor`.
        Detected at log steps, so within `log_every` steps. "none" turns the guard off.
      rollback_lr_factor: learning-rate factor applied at each rollback.
      grad_norm: log the gradients' global norm (`train/grad_norm`). The non-finite guard
        computes it anyway; with `on_nonfinite="none"`, False saves a pass over the gradients.
      progress: "auto", "bar", "log" or "off".
      plot: write `curves.png` at the end.
      early_stopping: an `EarlyStopping` hook, or None.
      checkpointing: a `Checkpointing` hook (saves, resumes), or None.
      hooks: more hooks.
      seed: seed of the training RNG (dropout keys...).
      tensorboard: False drops "tensorboard" from `loggers`.
      loggers: where logged scalars go: names from `train.logger.LOGGERS` ("tensorboard",
        "jsonl", "mlflow", "wandb") or `Logger` objects; only the main process logs.
      hyperparams: recorded by each logger at the start (`paxtrain fit`: the resolved config).
      compile_cache: JAX's persistent compilation cache directory; "auto" (a user cache
        directory), a path, or None (JAX's setting as it is); see `train.compile_cache`.
      preemption_signals: signal names that stop training gracefully.
      mesh: the devices and their layout: a `jax.sharding.Mesh`, or the sizes of
        `parallel.make_mesh` (`{"data": -1, "fsdp": 1, "tensor": 1}`); None puts every device
        on the data axis.
      strategy: "jit" (the state laid out on the mesh: data parallel, FSDP, tensor parallel)
        or "pmap" (data parallel with a replicated state); see `parallel.setup`.
      tensor_rules: the tensor-parallel rules of the "jit" strategy (`parallel.partition_spec`).
      init_from: `init_from(model) -> model` replaces parameters of the built model before the
        state is made from it: fine-tuning's `functools.partial(load_parameters, source=...)`.

    Example:
        >>> from paxtrain.train import Trainer
        >>> trainer = Trainer(max_steps=1000, run_dir="runs/demo", eval_every=200)
        >>> state = trainer.fit(model, data, optax.adamw(1e-3))  # doctest: +SKIP
    """

    def __init__(
        self,
        max_steps: int,
        *,
        run_dir: str | pathlib.Path = "runs/default",
        log_every: int = 50,
        eval_every: int | None = None,
        steps_per_call: int = 1,
        grad_accum_steps: int = 1,
        precision: str = "float32",
        ema_decay: float | None = None,
        on_nonfinite: str = "skip",
        rollback_lr_factor: float = 0.5,
        grad_norm: bool = True,
        progress: str = "auto",
        plot: bool = True,
        early_stopping: EarlyStopping | None = None,
        checkpointing: Checkpointing | None = None,
        hooks: Iterable[Hook] = (),
        seed: int = 0,
        tensorboard: bool = True,
        loggers: Iterable[str | Logger] = DEFAULT_LOGGERS,
        hyperparams: Mapping[str, Any] | None = None,
        compile_cache: str | None = AUTO_CACHE,
        preemption_signals: Iterable[str] = DEFAULT_PREEMPTION_SIGNALS,
        mesh: Mesh | Mapping[str, int] | None = None,
        strategy: str = "jit",
        tensor_rules: Sequence[parallel.Rule] = parallel.DEFAULT_TENSOR_RULES,
        init_from: Callable[[pax.Module], pax.Module] | None = None,
    ):
        if max_steps % steps_per_call:
            raise ValueError(STEPS_PER_CALL_MSG.format(max_steps=max_steps, spc=steps_per_call))
        self.max_steps, self.steps_per_call = max_steps, steps_per_call
        self.run_dir = pathlib.Path(run_dir)
        self.step_options = {
            "steps_per_call": steps_per_call,
            "grad_accum_steps": grad_accum_steps,
            "nonfinite_guard": on_nonfinite != "none",
            "rollback": on_nonfinite == "rollback",
            "ema_decay": ema_decay,
            "grad_norm": grad_norm,
        }
        self.policy = parse_precision(precision)
        if needs_loss_scale(self.policy):
            self.step_options["loss_scale"] = "dynamic"
        self.precision, self.seed = precision, seed
        self.loggers = [lg for lg in loggers if tensorboard or lg != "tensorboard"]
        self.hyperparams = dict(hyperparams or {})
        self.compile_cache = compile_cache
        # Wraps each step call; the profiler (`train.profile`) sets it while it traces.
        self.trace_step: Callable[[], Any] = contextlib.nullcontext
        self.checkpointing = checkpointing
        self.hooks: list[Hook] = [
            TrainMetrics(log_every),
            Throughput(log_every),
            Evaluation(eval_every),
            *([early_stopping] if early_stopping else []),
            *(
                [NonFinitePolicy(on_nonfinite, log_every, rollback_lr_factor)]
                if on_nonfinite != "none"
                else []
            ),
            Progress(progress),
            *hooks,
            # Near the end: a checkpoint records what the other hooks did at its step (its eval
            # metrics, their state), and the final save comes before the slow plot.
            *([checkpointing] if checkpointing else []),
            *([PlotCurves()] if plot else []),
        ]
        self._tail = bool(checkpointing) + bool(plot)
        self.preemption_signals = tuple(preemption_signals)
        self.mesh, self.strategy, self.tensor_rules = mesh, strategy, tuple(tensor_rules)
        self.init_from = init_from
        self.is_main_process = parallel.is_main_process()
        self.step = 0
        self.should_stop = False
        self.stop_reason: str | None = None
        self.preempted: str | None = None
        self.stopped_on_nonfinite = False
        self.nothing_to_train = False  # resumed at or past max_steps, or early-stopped
        self.hurry = False  # a repeated stop signal: exit as soon as the checkpoint is saved
        self.last_data_wait = 0.0
        self.last_eval_step: int | None = None
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

    def add_hook(
        self, hook: Hook | Callable[[Trainer, Any], Any], every: int | None = None
    ) -> None:
        """Adds a hook, or a function `fn(trainer, metrics)` run every `every` steps.

        Example:
            >>> trainer.add_hook(lambda tr, metrics: print(tr.step), every=100)  # doctest: +SKIP
        """
        if not isinstance(hook, Hook):
            if every is None:
                raise ValueError("add_hook(fn, every=N): a function hook needs `every`.")
            hook = EveryN(hook, every)
        # Before the checkpointing and plotting hooks, which stay last.
        self.hooks.insert(len(self.hooks) - self._tail, hook)

    def log(self, scalars: dict[str, float]) -> None:
        """Records scalars for the current step; written once all hooks of the step ran."""
        self._scalars.update(scalars)

    def stop(self, reason: str) -> None:
        """Asks the loop to stop after the current step."""
        self.should_stop, self.stop_reason = True, reason

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
        metrics = self.eval_metrics()
        if not metrics:
            return metrics
        self.last_eval_step = self.step
        self.eval_history.append((self.step, metrics))
        self.log({f"eval/{k}": v for k, v in metrics.items()})
        self._run_hooks("on_eval_end", metrics)
        return metrics

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
        from paxtrain.train.state import TrainState
        from paxtrain.train.step import make_eval_step, make_train_step

        enable_compile_cache(self.compile_cache)  # before the first compilation
        # A function that builds the model: the state is built sharded (`parallel.build_sharded`).
        factory = model if callable(model) and not isinstance(model, pax.Module) else None
        if factory is not None:
            model = jax.eval_shape(parallel.seeded(factory, self.seed))
        if loss_fn is None and not hasattr(model, "loss"):
            raise TypeError(NO_LOSS_MSG.format(cls=type(model).__name__))
        self.data = data
        loss_fn = loss_fn or model_loss
        # With the options' extras, so the state has the structure that checkpoints record. The
        # layout depends on that structure and the compiled step on the layout, so an uncompiled
        # step adds the extras first.
        init = make_train_step(loss_fn, **self.step_options).init

        def build(model: pax.Module) -> Any:
            if self.policy is not None:
                model = pax.apply_mp_policy(model, self.policy)
            return init(TrainState.create(model, optimizer, seed=self.seed))

        mesh = self.mesh if isinstance(self.mesh, Mesh) else parallel.make_mesh(**(self.mesh or {}))

        def plan_for(state: Any) -> parallel.ParallelStrategy:
            return parallel.setup(
                state,
                self.strategy,
                mesh,
                batch_axis=int(self.steps_per_call > 1),
                tensor_rules=self.tensor_rules,
            )

        if factory is None:
            state = build(model if self.init_from is None else self.init_from(model))
            self.plan = plan_for(state)
        else:

            def build_with(loaded: Mapping[int, jax.Array] | None = None) -> Any:
                return build(parallel.with_leaves(factory(), loaded or {}))

            def load(plan: parallel.ParallelStrategy) -> tuple[dict[int, jax.Array]]:
                shardings = None if plan.state_shardings is None else plan.state_shardings.model
                abstract = parallel.laid_out(model, shardings)
                return (parallel.arrays_by_leaf(self.init_from(abstract)),)

            state, self.plan = parallel.build_sharded(
                build_with, self.seed, plan_for, load=None if self.init_from is None else load
            )
        self._train_step = make_train_step(loss_fn, **self.step_options, **self.plan.step_kwargs)
        # With an EMA, its metrics too (`eval/ema_loss`...): what it is kept for.
        ema = self.step_options["ema_decay"] is not None
        self._eval_step = make_eval_step(
            eval_fn or model_eval, also_ema=ema, compile_step=self.plan.compile_eval_step
        )
        self.state = state
        self.step = int(state.step)
        first_batch = data.train_batch(0)
        self.plan.check_batch(first_batch)
        accumulate = self.step_options["grad_accum_steps"]
        if accumulate > 1:  # now, not as a traceback from inside the first compile
            try:
                check_micro_batches(first_batch, accumulate)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        # Now, not at the first evaluation hours later.
        first_eval = next(iter(data.eval_batches()), None)
        if first_eval is not None:
            self.plan.check_eval_batch(first_eval)
        self.examples_per_step = _leading_dim(first_batch)
        self.tokens_per_step = data.info.get("tokens_per_batch", 0)
        self._check_monitors(state)

    def _check_monitors(self, state: Any) -> None:
        """Checks the metrics that early stopping and checkpoint ranking monitor against those
        evaluation reports, from shapes only (nothing is compiled or run)."""
        monitors = [
            ("EarlyStopping", h.monitor, "trainer.early_stopping.monitor")
            for h in self.hooks
            if isinstance(h, EarlyStopping)
        ]
        if self.checkpointing is not None and self.checkpointing.manager_options["monitor"]:
            monitor = self.checkpointing.manager_options["monitor"]
            monitors.append(("Checkpointing", monitor, "trainer.checkpoint.monitor"))
        if not monitors:
            return
        batch = next(iter(self.data.eval_batches()), None)
        if batch is None:  # no evaluation data: nothing to monitor, which the first eval says
            return
        names = sorted(jax.eval_shape(self._eval_step, state, batch))
        available = [f"eval/{k}" for k in names]
        for owner, monitor, key in monitors:
            if monitor.removeprefix("eval/") not in names:
                monitor = f"eval/{monitor.removeprefix('eval/')}"
                close = difflib.get_close_matches(monitor, available, 1)
                raise ConfigError(
                    UNKNOWN_MONITOR_MSG.format(
                        owner=owner, monitor=monitor, available=available, key=key,
                        hint=f" Did you mean `{close[0]}`?" if close else "",
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
        # One writer per run directory; taken once the config, data and model proved good.
        lock = RunLock(self.run_dir)
        if self.is_main_process:
            lock.acquire()
        # Only the main process writes; the others run the same loop and the collective saves.
        self.logger = LoggerGroup(
            self.loggers if self.is_main_process else [], self.run_dir, self.hyperparams
        )
        try:
            with stop_on_signals(self, self.preemption_signals):
                self._resume_and_train()
        except BaseException as error:
            # A full disk fails the logs' last flush too: the error on its way names the cause.
            with contextlib.suppress(OSError):
                self.logger.close()
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                manager = self.checkpointing.manager if self.checkpointing else None
                last = manager.latest_step() if manager else None
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
        if self.checkpointing is not None:
            self.checkpointing.resume_into(self)
            reason = self._why_nothing_to_train()
            if reason:
                self.nothing_to_train = True
                self.stop(reason)
                self.checkpointing.manager.close()
                return
        self._run_hooks("on_train_start")
        self._loop()
        if self.preempted:  # the step the loop ended at, not the one the signal came in
            self.stop_reason = f"preempted by {self.preempted} at step {self.step}"
        self._run_hooks("on_train_end")

    def _why_nothing_to_train(self) -> str | None:
        """Why a resumed run is already done: at max_steps, or ended by its early stopping."""
        if self.step >= self.max_steps:
            return NOTHING_TO_TRAIN_MSG.format(step=self.step, max_steps=self.max_steps)
        for hook in self.hooks:
            if isinstance(hook, EarlyStopping) and hook.exhausted:
                return EARLY_STOPPED_MSG.format(step=self.step, reason=hook.reason)
        return None

    def _loop(self) -> None:
        group = self.steps_per_call if self.steps_per_call > 1 else None
        while self.step < self.max_steps and not self.should_stop:
            self._restart = False
            # Batches are indexed by step plus the batches a rollback skipped.
            first = self.step + int(self.state.extras.get("data_offset", 0))
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
                    self._run_hooks("on_step", metrics)

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

    def rollback(self, lr_factor: float) -> int:
        """Restores the newest checkpoint, skips the batches since then, scales the updates
        (the learning rate) by `lr_factor`; returns the step trained from again.

        Needs checkpointing and a step built with `rollback=True` (`on_nonfinite="rollback"`).
        """
        if self.checkpointing is None or self.checkpointing.manager is None:
            raise RuntimeError(NO_ROLLBACK_CHECKPOINTS_MSG)
        self.checkpointing.manager.wait()
        bad_step = self.step
        if self.checkpointing.manager.latest_step() is None:
            raise CheckpointError(ROLLBACK_BEFORE_FIRST_SAVE_MSG.format(step=bad_step))
        # From the current extras, not the checkpoint's: a second rollback to the same
        # checkpoint then skips the batches the first one went on with, and lowers the scale
        # again, instead of reading them again at the same learning rate.
        extras = self.state.extras
        restored, _ = self.checkpointing.manager.restore(self.checkpoint_state)
        self._write_scalars()  # logged so far (the bad steps' metrics): at the step they belong to
        self.state = restored.with_extras(
            data_offset=extras["data_offset"] + (bad_step - int(restored.step)),
            update_scale=extras["update_scale"] * lr_factor,
        )
        self.step = int(restored.step)
        self._restart = True
        return self.step

    def _run_hooks(self, event: str, *args: Any) -> None:
        self._dispatch(event, *args)
        self._write_scalars()

    def _dispatch(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            if self.is_main_process or not hook.main_process_only:
                getattr(hook, event)(self, *args)

    def _write_scalars(self) -> None:
        if self._scalars:
            scalars, self._scalars = self._scalars, {}
            self.logger.write(self.step, scalars)
            self._dispatch("on_log", scalars)
