"""Running one `paxtrain fit` (or `resume`) from a validated config, and its exit code: what
the `fit`/`resume` commands and the jobs of a launched sweep (`cli.launch`) all call."""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

import jax
from omegaconf import DictConfig, OmegaConf

from paxtrain.cli.build import (
    build_trainer,
    check_schedule_end,
    join_processes,
    schedule_horizon,
    with_hf_model,
)
from paxtrain.cli.runs import (
    CONFIG_FILE,
    RunFiles,
    _run_info,
    _timestamp,
    check_run_dir,
    config_changes,
)
from paxtrain.config.arguments import naming_keys
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
    rates = check_schedule_end(cfg, run_dir)
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
    if rates:
        say(rates)
    changes = config_changes(run_dir, cfg)
    if changes:
        say(CONFIG_CHANGED_MSG.format(file=CONFIG_FILE, changes="; ".join(changes)))
    abstract = jax.eval_shape(parallel.seeded(model, cfg.seed))  # `model` builds it, sharded
    say(abstract.summary() if hasattr(abstract, "summary") else abstract)
    started = time.perf_counter()
    # The config's own preemption signals too; a rule checked once the model is known
    # (`trainer.precision`) named as its key.
    with naming_keys(), before_training(cfg.trainer.preemption_signals):
        trainer.fit(model, data, optimizer=optimizer)
    report_end(trainer, run_dir, time.perf_counter() - started, say)
    return trainer


FINISHED_MSG = "paxtrain: {outcome} at step {step} in {elapsed:.0f}s; {shown}{skipped}"


def report_end(trainer: Any, run_dir: pathlib.Path, elapsed: float, say: Any = print) -> None:
    """The lines that end a `paxtrain fit`: how it ended (finished, failed, preempted: how to
    go on), its final evaluation, and why it failed when it did.

    Example:
        >>> report_end(fit_from_config(cfg), pathlib.Path("runs/demo"), 12.0)  # doctest: +SKIP
        paxtrain: finished at step 500 in 12s; eval/loss=1.2345
    """
    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    shown = ", ".join(f"eval/{k}={v:.4f}" for k, v in final.items())
    if trainer.preempted:
        saved = "checkpoint saved" if trainer.checkpoints else "no checkpointing, nothing saved"
        say(f"paxtrain: {trainer.stop_reason}; {saved}. Continue with: paxtrain resume {run_dir}")
        return
    if not trainer.nothing_to_train:
        outcome = "failed" if exit_code(trainer) else "finished"
        say(
            FINISHED_MSG.format(
                outcome=outcome, step=trainer.step, elapsed=elapsed, shown=shown,
                skipped=skipped_note(trainer),
            )
        )  # fmt: skip
    if trainer.stop_reason:
        say(f"paxtrain: {trainer.stop_reason}")
    if not final_eval_is_finite(trainer):
        say(NONFINITE_EVAL_MSG)
    elif not trainer.stopped_on_nonfinite:
        too_many = _skipped_too_many(trainer)
        if too_many:
            say(f"paxtrain: {too_many}")


def skipped_note(trainer: Any) -> str:
    """What the final line says of the steps the non-finite guard skipped: `; 3 of 500 steps
    skipped (non-finite loss or gradients)`, or nothing when none was (or no guard ran).

    Example:
        >>> skipped_note(fit_from_config(cfg))  # doctest: +SKIP
        ''
    """
    from paxtrain.train.nonfinite import skipped_steps

    skipped = int(skipped_steps(trainer.state))
    if not skipped:
        return ""
    return f"; {skipped} of {trainer.step} steps skipped (non-finite loss or gradients)"


def _skipped_too_many(trainer: Any) -> str | None:
    from paxtrain.train.nonfinite import skipped_too_many

    return skipped_too_many(trainer.state, trainer.step)


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
    stuck skipping them), after skipping more than `MAX_SKIPPED_FRACTION` of its steps, or when
    the final evaluation is not finite.

    Example:
        >>> exit_code(fit_from_config(cfg))  # doctest: +SKIP
        0
    """
    from paxtrain.train.nonfinite import NONFINITE_EXIT_CODE
    from paxtrain.train.preemption import PREEMPTED_EXIT_CODE

    if trainer.preempted:
        return PREEMPTED_EXIT_CODE
    failed = trainer.stopped_on_nonfinite or not final_eval_is_finite(trainer)
    return NONFINITE_EXIT_CODE if failed or _skipped_too_many(trainer) else 0
