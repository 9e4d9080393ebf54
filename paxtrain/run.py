"""Building a run from a validated config: run directory, data, model, optimizer, trainer."""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
from omegaconf import DictConfig, OmegaConf

from paxtrain.config import ConfigError, check_target, locate
from paxtrain.optax_config import ALIASES, build_optimizer
from paxtrain.train.hooks import EarlyStopping, Hook


def environment_report() -> str:
    """Versions of Python, paxtrain and its core dependencies, and the devices JAX sees.

    Example:
        >>> print(environment_report())  # doctest: +SKIP
    """
    lines = [f"python      {platform.python_version()} ({platform.platform()})"]
    for package in (
        "paxtrain",
        "jax",
        "jaxlib",
        "optax",
        "orbax-checkpoint",
        "hydra-core",
        "tensorboardX",
    ):
        try:
            lines.append(f"{package:<11} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{package:<11} not installed")
    lines.append(f"backend     {jax.default_backend()}")
    lines.extend(f"device {d.id:<4} {d.platform}: {d.device_kind}" for d in jax.devices())
    return "\n".join(lines)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def assign_sweep_dirs(
    configs: list[DictConfig], jobs: list[list[str]], config_path: str
) -> list[DictConfig]:
    """Gives each job of a sweep its own run directory under one sweep directory: the `run_dir`
    the config sets (or the command line), else `runs/NAME-multirun-TIMESTAMP`. A swept
    `run_dir` (`run_dir=a,b`) already gives each job its own.

    Example:
        >>> jobs = [["seed=1", "trainer.max_steps=5"], ["seed=2", "trainer.max_steps=5"]]
        >>> cfgs = [OmegaConf.create({"seed": s, "run_dir": None}) for s in (1, 2)]
        >>> assign_sweep_dirs(cfgs, jobs, "configs/char_rnn.yaml")[1].run_dir
        'runs/char_rnn-multirun-...-.../1_seed=2'
        >>> cfgs = [OmegaConf.create({"seed": s, "run_dir": "sweeps/a"}) for s in (1, 2)]
        >>> assign_sweep_dirs(cfgs, jobs, "configs/char_rnn.yaml")[1].run_dir
        'sweeps/a/1_seed=2'
    """
    given = {cfg.run_dir for cfg in configs}
    if len(given) > 1:
        return configs
    (run_dir,) = given or {None}
    base = (
        pathlib.Path(run_dir)
        if run_dir
        else pathlib.Path("runs") / f"{pathlib.Path(config_path).stem}-multirun-{_timestamp()}"
    )
    shared = set.intersection(*(set(job) for job in jobs)) if jobs else set()
    out = []
    for i, (cfg, overrides) in enumerate(zip(configs, jobs)):
        cfg = cfg.copy()
        swept = ",".join(o for o in overrides if o not in shared and "/" not in o)[:80]
        cfg.run_dir = str(base / f"{i}_{swept}" if swept else base / str(i))
        out.append(cfg)
    return out


BUILD_FAILED_MSG = "`{key}` ({target}): {error}"
# Errors a constructor raises for a bad value or file; any other exception is a bug, and keeps
# its traceback.
_BAD_INPUT_ERRORS = (ValueError, OSError, ImportError)
_HYDRA_FULL_KEY = re.compile(r"full_key: (\S+)")
_HYDRA_TARGET = re.compile(r"target '([^']+)'")


def instantiate(node: DictConfig, key: str, **provided: Any) -> Any:
    """Builds a `_target_` section with `hydra.utils.instantiate`: nested `_target_` sections
    are built first, `_partial_: true` gives a `functools.partial`; the `provided` values the
    target's signature asks for and the section leaves out are passed too (the model's
    `vocab_size` from `data.info`), as they are, not through OmegaConf.

    The section is checked against the target's signature first (`check_target`, nested
    sections included). A `ValueError`, `OSError` or `ImportError` of a constructor (a bad value,
    a missing file) is a `ConfigError` naming the (nested) section.

    Example:
        >>> section = OmegaConf.create({"_target_": "paxtrain.data.CharCorpus", "seq_len": 8,
        ...                             "batch_size": 2, "max_chars": 2000})
        >>> instantiate(section, "data").info["vocab_size"] > 10
        True
        >>> ramp = OmegaConf.create({"_target_": "optax.linear_schedule", "_partial_": True,
        ...                          "init_value": 0.0, "end_value": 1.0})
        >>> float(instantiate(ramp, "schedule")(transition_steps=4)(2))
        0.5
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    target = locate(str(node["_target_"]), key)
    params = inspect.signature(target).parameters
    extra = {k: v for k, v in provided.items() if k in params and k not in node}
    check_target(node, key, provided=tuple(extra))
    later = bool(extra) and not node.get("_partial_", False)  # called below with `extra`
    try:
        built = hydra_instantiate(node, _convert_="all", **({"_partial_": True} if later else {}))
        return built(**extra) if later else built
    except InstantiationException as error:
        cause, text = error.__cause__, str(error)
        if cause is not None and not isinstance(cause, _BAD_INPUT_ERRORS):
            raise cause from None
        where = _HYDRA_FULL_KEY.search(text)
        named = _HYDRA_TARGET.search(text)
        raise ConfigError(
            BUILD_FAILED_MSG.format(
                key=where.group(1) if where else key,
                target=named.group(1) if named else node["_target_"],
                error=" ".join(str(cause or text.splitlines()[0]).split()),
            )
        ) from None
    except _BAD_INPUT_ERRORS as error:  # from `built(**extra)`
        message = " ".join(str(error).split())
        raise ConfigError(
            BUILD_FAILED_MSG.format(key=key, target=node["_target_"], error=message)
        ) from None


RUN_INFO_FILE = "run.json"
CONFIG_FILE = "config.yaml"


def config_hash(cfg: DictConfig) -> str:
    """A short hash of the resolved config, recorded with each checkpoint.

    Example:
        >>> len(config_hash(OmegaConf.create({"a": 1})))
        12
    """
    text = json.dumps(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _run_info(cfg: DictConfig, config_path: str | None) -> dict[str, Any]:
    return {
        "paxtrain": importlib.metadata.version("paxtrain"),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "git_sha": _git_sha(),
        "config_path": str(config_path) if config_path else None,
        "config_hash": config_hash(cfg),
    }


class RunFiles(Hook):
    """Writes `config.yaml` and `run.json` once training starts, i.e. after a resume has
    succeeded: a resume that fails (say, with a mismatching override) leaves the run's files
    as they were."""

    main_process_only = True

    def __init__(self, cfg: DictConfig, info: dict[str, Any]):
        self.cfg, self.info = cfg, info

    def on_train_start(self, trainer: Any) -> None:
        # Unresolved: a resume re-resolves `${optimizer.horizon}` with its own overrides.
        (trainer.run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(self.cfg))
        (trainer.run_dir / RUN_INFO_FILE).write_text(json.dumps(self.info, indent=2) + "\n")


def arguments_for(target: Callable, section: DictConfig) -> dict[str, Any]:
    """The keys of a config section that `target` takes as parameters, with their values.

    The schemas in `paxtrain.config` name their keys after the parameters they set, so a key
    added to both reaches the object without more code here. Sub-sections (`early_stopping`)
    and keys that are no parameter (`enabled`) are left to the caller.

    Example:
        >>> arguments_for(EarlyStopping, OmegaConf.create({"monitor": "eval/loss", "x": 1}))
        {'monitor': 'eval/loss'}
    """
    parameters = inspect.signature(target).parameters
    values = OmegaConf.to_container(section, resolve=True, enum_to_str=True)  # choices: str
    return {
        key: value
        for key, value in values.items()
        if key in parameters and not isinstance(value, dict)  # sub-sections build objects
    }


def join_processes() -> None:
    """Joins a multi-process run when the environment describes one (Slurm, a TPU pod,
    JAX_COORDINATOR_ADDRESS...); an incomplete description is a `ConfigError`.

    Example:
        >>> join_processes()  # a single process: nothing to do
    """
    from paxtrain import parallel

    try:
        parallel.initialize_distributed()
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"{error} (Or set `parallel.distributed=false` to run alone.)") from None


HORIZON_KEPT_MSG = (
    "paxtrain: the learning-rate schedule ({schedule}) keeps its horizon of {saved} steps from the "
    "checkpoint; trainer.max_steps is now {max_steps}. To stretch the schedule over the new "
    "length instead (a jump in the learning rate), add `optimizer.horizon={max_steps}`."
)


def schedule_horizon(cfg: DictConfig, run_dir: pathlib.Path) -> int:
    """The number of steps the learning-rate schedule spans: `optimizer.horizon` if set, else
    the horizon recorded in the run's newest checkpoint (a resume with a larger
    `trainer.max_steps` keeps the schedule it trained with, and says so), else `max_steps`.

    Example:
        >>> schedule_horizon(cfg, pathlib.Path("runs/new"))  # doctest: +SKIP
        1500
    """
    from paxtrain.train.checkpointing import CHECKPOINT_DIR

    max_steps = cfg.trainer.max_steps
    saved = _saved_meta(run_dir / CHECKPOINT_DIR).get("schedule_horizon")
    horizon = int(cfg.optimizer.horizon or saved or max_steps)
    schedule = OmegaConf.select(cfg, "optimizer.learning_rate._target_")
    follows_horizon = "${optimizer.horizon}" in OmegaConf.to_yaml(cfg.optimizer)
    if saved is not None and horizon != max_steps and follows_horizon:
        print(
            HORIZON_KEPT_MSG.format(schedule=schedule, saved=horizon, max_steps=max_steps),
            flush=True,
        )
    return horizon


def _checkpoint_steps(run_dir: pathlib.Path) -> list[int]:
    """The steps saved in a run directory's checkpoints (none for a new run)."""
    from paxtrain.checkpoint import CheckpointManager
    from paxtrain.train.checkpointing import CHECKPOINT_DIR

    if not (run_dir / CHECKPOINT_DIR).is_dir():
        return []
    manager = CheckpointManager(run_dir / CHECKPOINT_DIR, read_only=True)
    try:
        return manager.steps()
    finally:
        manager.close()


def _saved_meta(directory: pathlib.Path) -> dict[str, Any]:
    """The JSON record of the newest readable checkpoint in `directory`, or {}."""
    from paxtrain.checkpoint import CheckpointManager

    if not directory.is_dir():
        return {}
    manager = CheckpointManager(directory, read_only=True)
    try:
        for step in reversed(manager.steps()):
            try:
                return manager.meta(step)
            except Exception:  # unreadable: the restore reports it; try an older one
                continue
        return {}
    finally:
        manager.close()


def build_trainer(
    cfg: DictConfig,
    run_dir: pathlib.Path,
    meta: dict[str, Any] | None = None,
    horizon: int | None = None,
):
    """The data, model, optimizer and `Trainer` a validated config describes; the optimizer's
    schedule spans `horizon` steps (default `trainer.max_steps`).

    The model comes as the function that builds it (frozen by `freeze`), so that the trainer
    builds the state sharded; `init_from`'s parameters are read into that layout (see
    `Trainer.prepare`).

    Example:
        >>> trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path("runs/x"))  # doctest: +SKIP
    """
    import paxtrain as pax
    from paxtrain.finetune import freeze_by_path, load_parameters
    from paxtrain.train.checkpointing import Checkpointing
    from paxtrain.train.profile import Profile
    from paxtrain.train.trainer import Trainer

    if cfg.parallel.distributed:
        join_processes()
    data = instantiate(cfg.data, "data")

    def model() -> pax.Module:
        # Called by the trainer under `jax.jit` with the layout's shardings: built sharded.
        built = instantiate(cfg.model, "model", **data.info)
        try:
            return freeze_by_path(built, list(cfg.freeze)) if cfg.freeze else built
        except ValueError as error:
            raise ConfigError(f"`freeze`: {error}") from None

    include = list(cfg.init_from_include)
    init_from = functools.partial(load_parameters, source=cfg.init_from, include=include)
    # A run directory with checkpoints restores every parameter from them (or fails naming the
    # damaged ones), so `init_from` is read only for a fresh start: a resume or an eval of a
    # fine-tuned run then works after the run it started from is gone.
    restores = cfg.trainer.checkpoint.enabled and bool(_checkpoint_steps(run_dir))
    callbacks = [instantiate(c, f"callbacks[{i}]") for i, c in enumerate(cfg.callbacks)]
    if cfg.trainer.profile.start_step is not None:  # a jax.profiler trace of some steps
        callbacks.append(Profile(**arguments_for(Profile, cfg.trainer.profile)))
    t, es, ck = cfg.trainer, cfg.trainer.early_stopping, cfg.trainer.checkpoint
    rules = cfg.parallel.tensor_rules  # None: the default rules
    trainer = Trainer(
        **arguments_for(Trainer, t),
        run_dir=run_dir,
        early_stopping=EarlyStopping(**arguments_for(EarlyStopping, es)) if es.monitor else None,
        checkpointing=Checkpointing(**arguments_for(Checkpointing, ck), meta=meta)
        if ck.enabled
        else None,
        hooks=callbacks,
        seed=cfg.seed,
        mesh=dict(cfg.mesh),
        strategy=str(cfg.parallel.strategy),
        init_from=init_from if cfg.init_from and not restores else None,
        **({} if rules is None else {"tensor_rules": OmegaConf.to_container(rules)}),
    )
    trainer.loggers = [  # `_target_` sections build Logger objects
        lg if isinstance(lg, str) else instantiate(lg, f"trainer.loggers[{i}]")
        for i, lg in enumerate(t.loggers)
    ]
    cfg.optimizer.horizon = horizon or t.max_steps  # what `${optimizer.horizon}` resolves to
    return trainer, model, data, build_optimizer(cfg.optimizer)


def fit_from_config(cfg: DictConfig, config_path: str | None = None) -> Any:
    """Runs `paxtrain fit` for one validated config; returns the trainer after training.

    A run directory that already holds checkpoints is resumed from the newest complete one.

    Example:
        >>> trainer = fit_from_config(compose("configs/char_rnn.yaml", []))  # doctest: +SKIP
    """
    run_dir = pathlib.Path(cfg.run_dir or f"runs/{cfg.name}-{_timestamp()}")
    check_run_dir(run_dir)
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    if cfg.parallel.distributed:
        join_processes()  # before anything starts JAX's backends (reading checkpoints does)
    info = _run_info(cfg, config_path)
    horizon = schedule_horizon(cfg, run_dir)
    info["schedule_horizon"] = horizon
    from paxtrain import parallel

    # The run directory is made by `trainer.fit` once data, model and config proved good.
    trainer, model, data, optimizer = build_trainer(cfg, run_dir, meta=info, horizon=horizon)
    trainer.add_hook(RunFiles(cfg, info))
    trainer.hyperparams = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    # One process speaks for a multi-process run.
    say = print if trainer.is_main_process else lambda *_: None
    say(f"paxtrain: run directory {run_dir}")
    abstract = jax.eval_shape(parallel.seeded(model, cfg.seed))  # `model` builds it, sharded
    say(abstract.summary() if hasattr(abstract, "summary") else abstract)
    started = time.perf_counter()
    trainer.fit(model, data, optimizer=optimizer)
    elapsed = time.perf_counter() - started
    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    shown = ", ".join(f"eval/{k}={v:.4f}" for k, v in final.items())
    if trainer.preempted:
        saved = "checkpoint saved" if trainer.checkpointing else "no checkpointing, nothing saved"
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


RUN_DIR_IS_FILE_MSG = "run_dir={run_dir} is a file, not a directory: choose another `run_dir=...`."
RUN_DIR_UNWRITABLE_MSG = (
    "run_dir={run_dir} cannot be written ({where} is not writable): choose another "
    "`run_dir=...` or fix the permissions."
)


def check_run_dir(run_dir: pathlib.Path) -> None:
    """Raises ConfigError when `run_dir` cannot become a run directory (a file, no write
    permission), before anything is built.

    Example:
        >>> check_run_dir(pathlib.Path("runs/new"))
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(RUN_DIR_IS_FILE_MSG.format(run_dir=run_dir))
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(RUN_DIR_IS_FILE_MSG.format(run_dir=existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(RUN_DIR_UNWRITABLE_MSG.format(run_dir=run_dir, where=existing))


def exit_code(trainer: Any) -> int:
    """The exit code of a finished `paxtrain fit`/`resume`: 0, 75 after a preemption (run
    the command again), 3 after stopping on non-finite steps (`on_nonfinite=stop`, or a run
    stuck skipping them) or when the final evaluation is not finite.

    Example:
        >>> exit_code(fit_from_config(cfg))  # doctest: +SKIP
        0
    """
    from paxtrain.train.hooks import NONFINITE_EXIT_CODE
    from paxtrain.train.preemption import PREEMPTED_EXIT_CODE

    if trainer.preempted:
        return PREEMPTED_EXIT_CODE
    failed = trainer.stopped_on_nonfinite or not final_eval_is_finite(trainer)
    return NONFINITE_EXIT_CODE if failed else 0


NO_RUN_DIR_MSG = (
    "Run directory {run_dir} does not exist: check the path (`paxtrain resume RUN_DIR`)."
)
NOT_A_RUN_MSG = "{run_dir} has no {file}: is it a paxtrain run directory?"

# Modules whose `_target_`s a run directory's config may name; a run directory is data, and
# anything else must be allowed by the user (`--allow-target`, or this environment variable).
# optax's factories build optimizers and schedules, nothing else; `ALIASES` name optax targets.
# `recipes` is where the recipes were before they moved into the package: old runs name it.
ALLOWED_TARGET_MODULES = ("paxtrain", "recipes", "optax")
ALLOW_TARGETS_ENV = "PAXTRAIN_ALLOW_TARGETS"

REFUSED_TARGET_MSG = (
    "{config} names `_target_: {target}` (at `{key}`), which a run directory may not run: "
    "loading a run only builds objects from {allowed}. If you trust this run, allow the module "
    "with `--allow-target {module}` or {env}={module} (comma-separated)."
)


def _targets(node: Any, key: str = "") -> list[tuple[str, str]]:
    """The `(key, _target_)` pairs of a plain config tree."""
    if isinstance(node, dict):
        found = [(key or "<root>", str(node["_target_"]))] if "_target_" in node else []
        for k, v in node.items():
            found += _targets(v, f"{key}.{k}" if key else str(k))
        return found
    if isinstance(node, list):
        return [t for i, v in enumerate(node) for t in _targets(v, f"{key}.{i}")]
    return []


def _overridden(key: str, overrides: list[str]) -> bool:
    """Whether an override replaces `key` or a section above it (`callbacks=[]`)."""
    for override in overrides:
        name = override.partition("=")[0].lstrip("+~")
        if key == name or key.startswith(f"{name}.") or f"{key}._target_" == name:
            return True
    return False


def _saved_targets(path: pathlib.Path) -> list[tuple[str, str]]:
    """The `(key, _target_)` pairs of a saved run config, none if it is malformed (`compose`
    reports that, with its line)."""
    try:
        return _targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    except Exception:
        return []


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def legacy_recipe_overrides(path: pathlib.Path) -> list[str]:
    """Overrides pointing a saved run config's `recipes.X` targets at `paxtrain.recipes.X`, the
    recipes' home since they moved into the package, unless a module `recipes.X` is importable.

    Example:
        >>> legacy_recipe_overrides(pathlib.Path("runs/old/config.yaml"))  # doctest: +SKIP
        ['model._target_=paxtrain.recipes.char_rnn.CharRNN']
    """
    return [
        f"{key}._target_=paxtrain.{target}"
        for key, target in _saved_targets(path)
        if target.startswith("recipes.")
        and key != "<root>"
        and not _importable(target.rpartition(".")[0])
    ]


def check_run_targets(
    path: pathlib.Path, overrides: list[str], allow: tuple[str, ...] = ()
) -> None:
    """Refuses a saved run config naming a `_target_` outside the allow-list, before
    anything is imported: paxtrain's and the recipes' modules, those in `allow` and in the
    `PAXTRAIN_ALLOW_TARGETS` environment variable. Targets the `overrides` set are the user's.

    Example:
        >>> check_run_targets(pathlib.Path("runs/x/config.yaml"), [], allow=("my_project",))  # doctest: +SKIP
    """
    allowed = [*ALLOWED_TARGET_MODULES, *allow]
    allowed += [m.strip() for m in os.environ.get(ALLOW_TARGETS_ENV, "").split(",") if m.strip()]
    for key, target in _saved_targets(path):
        module = target.rpartition(".")[0]
        if (
            _overridden(key, overrides)
            or target in ALIASES
            or any(module == m or module.startswith(f"{m}.") for m in allowed)
        ):
            continue
        raise ConfigError(
            REFUSED_TARGET_MSG.format(
                config=path, target=target, key=key, module=module or target,
                allowed=", ".join(allowed), env=ALLOW_TARGETS_ENV,
            )
        )  # fmt: skip


def load_run_config(
    run_dir: str | pathlib.Path, overrides: list[str], allow_targets: tuple[str, ...] = ()
) -> DictConfig:
    """The saved config of a run directory with `overrides` applied, pointed at that directory.

    Its `_target_`s must be allowed (see `check_run_targets`): a run directory is data.

    Example:
        >>> cfg = load_run_config("runs/char_rnn-20260101-120000", ["trainer.max_steps=3000"])  # doctest: +SKIP
    """
    from paxtrain.config import compose

    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not pathlib.Path(run_dir).is_dir():
        raise ConfigError(NO_RUN_DIR_MSG.format(run_dir=run_dir))
    if not path.is_file():
        raise ConfigError(NOT_A_RUN_MSG.format(run_dir=run_dir, file=CONFIG_FILE))
    check_run_targets(path, overrides, allow_targets)
    cfg = compose(path, [*legacy_recipe_overrides(path), *overrides])
    cfg.run_dir = str(pathlib.Path(run_dir))
    return cfg


NO_MONITOR_MSG = (
    "`--step best` needs the metric that ranks checkpoints, and this run recorded none: train "
    "with `trainer.checkpoint.monitor=eval/loss` (and `trainer.checkpoint.keep_best=1` to keep "
    "the best one), or evaluate `--step latest` or a step number."
)


def evaluate_run(
    run_dir: str | pathlib.Path,
    step: str = "latest",
    overrides: list[str] | None = None,
    allow_targets: tuple[str, ...] = (),
) -> dict[str, float]:
    """Evaluates a run's checkpoint ("latest", "best" or a step number) on its eval data.

    `overrides` change the saved config, e.g. the `mesh` on other devices than the run's.

    Example:
        >>> evaluate_run("runs/char_rnn-20260101-120000", step="best")  # doctest: +SKIP
        {'loss': 1.43, 'bits_per_char': 2.07}
    """
    from paxtrain.checkpoint import CheckpointManager
    from paxtrain.train.checkpointing import CHECKPOINT_DIR

    cfg = load_run_config(run_dir, overrides or [], allow_targets)
    ck = cfg.trainer.checkpoint
    if step == "best" and not ck.monitor:
        raise ConfigError(NO_MONITOR_MSG)
    trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path(run_dir))
    trainer.prepare(model, data, optimizer)
    manager = CheckpointManager(
        pathlib.Path(run_dir) / CHECKPOINT_DIR, monitor=ck.monitor, mode=ck.mode, read_only=True
    )
    trainer.state, meta = manager.restore(trainer.checkpoint_state, step=step)
    trainer.step = int(trainer.state.step)
    manager.close()
    return trainer.eval_metrics()
