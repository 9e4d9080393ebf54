"""Running one `paxtrain fit` (or `resume`) from a validated config, and its exit code: what
the `fit`/`resume` commands and the jobs of a launched sweep (`cli.launch`) all call."""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

import jax
from omegaconf import DictConfig, OmegaConf

from paxtrain.cli.build import build_trainer, join_processes, schedule_horizon, with_hf_model
from paxtrain.cli.runs import (
    CONFIG_FILE,
    RunFiles,
    _run_info,
    _timestamp,
    check_run_dir,
    config_changes,
)
from paxtrain.config.optimizer import with_horizon
from paxtrain.train.preemption import before_training

CONFIG_CHANGED_MSG = (
    "paxtrain: resuming with another config than the run's {file} (which this run now "
    "replaces): {changes}"
)


def fit_from_config(cfg: DictConfig, config_path: str | None = None, restart: bool = False) -> Any:
    """Runs `paxtrain fit` for one validated config; returns the trainer after training.

    A run directory that already holds checkpoints is resumed from the newest complete one;
    one whose checkpoints are all unreadable (or moved aside) is refused unless `restart`
    (`--restart`: start from step 0, moving the unreadable ones aside).

    Example:
        >>> trainer = fit_from_config(compose("configs/char_rnn.yaml", []))  # doctest: +SKIP
    """
    run_dir = pathlib.Path(cfg.run_dir or f"runs/{cfg.name}-{_timestamp()}")
    check_run_dir(run_dir)
    cfg = with_hf_model(cfg.copy(), run_dir)  # before the config is hashed and saved
    cfg.run_dir = str(run_dir)
    if cfg.parallel.distributed:
        join_processes()  # before anything starts JAX's backends (reading checkpoints does)
    info = _run_info(cfg, config_path)
    horizon = schedule_horizon(cfg, run_dir)
    from paxtrain import parallel

    # The run directory is made by `trainer.fit` once data, model and config proved good. The
    # horizon is recorded once, with each checkpoint, where a resume looks for it.
    meta = {**info, "schedule_horizon": horizon}
    trainer, model, data, optimizer = build_trainer(
        cfg, run_dir, meta=meta, horizon=horizon, restart=restart
    )
    trainer.add_hook(RunFiles(cfg, info))
    resolved = with_horizon(cfg, horizon)  # what the run trains with
    trainer.hyperparams = OmegaConf.to_container(resolved, resolve=True, enum_to_str=True)
    # One process speaks for a multi-process run.
    say = print if trainer.is_main_process else lambda *_: None
    say(f"paxtrain: run directory {run_dir}")
    changes = config_changes(run_dir, cfg)
    if changes:
        say(CONFIG_CHANGED_MSG.format(file=CONFIG_FILE, changes="; ".join(changes)))
    abstract = jax.eval_shape(parallel.seeded(model, cfg.seed))  # `model` builds it, sharded
    say(abstract.summary() if hasattr(abstract, "summary") else abstract)
    started = time.perf_counter()
    with before_training(cfg.trainer.preemption_signals):  # those the config adds, too
        trainer.fit(model, data, optimizer=optimizer)
    elapsed = time.perf_counter() - started
    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    shown = ", ".join(f"eval/{k}={v:.4f}" for k, v in final.items())
    if trainer.preempted:
        saved = "checkpoint saved" if trainer.checkpoints else "no checkpointing, nothing saved"
        say(f"paxtrain: {trainer.stop_reason}; {saved}. Continue with: paxtrain resume {run_dir}")
        return trainer
    if not trainer.nothing_to_train:
        say(f"paxtrain: finished at step {trainer.step} in {elapsed:.0f}s; {shown}")
    if trainer.stop_reason:
        say(f"paxtrain: {trainer.stop_reason}")
    if not final_eval_is_finite(trainer):
        say(NONFINITE_EVAL_MSG)
    return trainer


NONFINITE_EVAL_MSG = (
    "paxtrain: the final evaluation is not finite, so the run failed (exit code 3): lower the "
    "learning rate, or look for NaN/Inf in the data or the loss."
)


def final_eval_is_finite(trainer: Any) -> bool:
    """Whether every metric of the trainer's last evaluation is a finite number (true when it
    never evaluated).

    Example:
        >>> final_eval_is_finite(fit_from_config(cfg))  # doctest: +SKIP
        True
    """
    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    return all(math.isfinite(value) for value in final.values())


def exit_code(trainer: Any) -> int:
    """The exit code of a finished `paxtrain fit`/`resume`: 0, 75 after a preemption (run
    the command again), 3 after stopping on non-finite steps (`on_nonfinite=stop`, or a run
    stuck skipping them) or when the final evaluation is not finite.

    Example:
        >>> exit_code(fit_from_config(cfg))  # doctest: +SKIP
        0
    """
    from paxtrain.train.nonfinite import NONFINITE_EXIT_CODE
    from paxtrain.train.preemption import PREEMPTED_EXIT_CODE

    if trainer.preempted:
        return PREEMPTED_EXIT_CODE
    failed = trainer.stopped_on_nonfinite or not final_eval_is_finite(trainer)
    return NONFINITE_EXIT_CODE if failed else 0
