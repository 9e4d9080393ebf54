"""Building a run from a validated config: run directory, data, model, optimizer, trainer."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import inspect
import json
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import optax
from omegaconf import DictConfig, OmegaConf

from paxtrain.config import ConfigError, check_target, locate
from paxtrain.optim import make_schedule, make_transformation
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


def sweep_overrides(overrides: list[str]) -> list[list[str]]:
    """Expands Hydra sweep overrides (`a=1,2 b=x`) into one override list per job.

    Example:
        >>> sweep_overrides(["seed=1,2", "trainer.max_steps=5"])
        [['seed=1', 'trainer.max_steps=5'], ['seed=2', 'trainer.max_steps=5']]
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def assign_sweep_dirs(
    configs: list[DictConfig], jobs: list[list[str]], config_path: str
) -> list[DictConfig]:
    """Gives each job of a sweep its own run directory under one sweep directory.

    Example:
        >>> jobs = [["seed=1", "trainer.max_steps=5"], ["seed=2", "trainer.max_steps=5"]]
        >>> cfgs = [OmegaConf.create({"seed": 1}), OmegaConf.create({"seed": 2})]
        >>> assign_sweep_dirs(cfgs, jobs, "configs/char_rnn.yaml")[1].run_dir
        'runs/char_rnn-multirun-...-.../1_seed=2'
    """
    base = pathlib.Path("runs") / f"{pathlib.Path(config_path).stem}-multirun-{_timestamp()}"
    shared = set.intersection(*(set(job) for job in jobs)) if jobs else set()
    out = []
    for i, (cfg, overrides) in enumerate(zip(configs, jobs)):
        cfg = cfg.copy()
        swept = ",".join(o for o in overrides if o not in shared and "/" not in o)[:80]
        cfg.run_dir = str(base / f"{i}_{swept}" if swept else base / str(i))
        out.append(cfg)
    return out


def build_optimizer(cfg: DictConfig, max_steps: int) -> optax.GradientTransformation:
    """The optax transformation an `OptimizerConfig` describes, schedule and clipping included.

    Example:
        >>> tx = build_optimizer(OmegaConf.structured(OptimizerConfig()), max_steps=100)  # doctest: +SKIP
    """
    schedule = make_schedule(cfg.schedule, cfg.lr, max_steps, cfg.warmup_steps)
    kwargs: dict[str, Any] = {"sgd": {"momentum": cfg.momentum}}.get(
        cfg.name, {"b1": cfg.b1, "b2": cfg.b2}
    )
    if cfg.name == "adamw":
        kwargs["weight_decay"] = cfg.weight_decay
    return make_transformation(cfg.name, schedule, clip_grad_norm=cfg.clip_grad_norm, **kwargs)


def instantiate(node: DictConfig, key: str, **provided: Any) -> Any:
    """Builds a `_target_` section, passing those `provided` values its signature asks for.

    Example:
        >>> model = instantiate(cfg.model, "model", vocab_size=97)  # doctest: +SKIP
    """
    target = locate(str(node["_target_"]), key)
    params = inspect.signature(target).parameters
    extra = {k: v for k, v in provided.items() if k in params and k not in node}
    check_target(node, key, provided=tuple(extra))
    kwargs = OmegaConf.to_container(node, resolve=True)
    kwargs.pop("_target_")
    return target(**kwargs, **extra)


RUN_INFO_FILE = "run.json"
CONFIG_FILE = "config.yaml"


def config_hash(cfg: DictConfig) -> str:
    """A short hash of the resolved config, recorded with each checkpoint.

    Example:
        >>> len(config_hash(OmegaConf.create({"a": 1})))
        12
    """
    text = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
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
        (trainer.run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
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
    values = OmegaConf.to_container(section, resolve=True)
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


def build_trainer(cfg: DictConfig, run_dir: pathlib.Path, meta: dict[str, Any] | None = None):
    """The data, model, optimizer and `Trainer` a validated config describes.

    Example:
        >>> trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path("runs/x"))  # doctest: +SKIP
    """
    import paxtrain as pax
    from paxtrain.finetune import freeze_by_path, load_parameters
    from paxtrain.train.checkpointing import Checkpointing
    from paxtrain.train.trainer import Trainer

    if cfg.parallel.distributed:
        join_processes()
    data = instantiate(cfg.data, "data")
    pax.seed_rng_key(cfg.seed)
    model = instantiate(cfg.model, "model", **data.info)
    if cfg.init_from:
        model = load_parameters(model, cfg.init_from, include=list(cfg.init_from_include))
    if cfg.freeze:
        model = freeze_by_path(model, list(cfg.freeze))
    callbacks = [instantiate(c, f"callbacks[{i}]") for i, c in enumerate(cfg.callbacks)]
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
        strategy=cfg.parallel.strategy,
        **({} if rules is None else {"tensor_rules": OmegaConf.to_container(rules)}),
    )
    return trainer, model, data, build_optimizer(cfg.optimizer, t.max_steps)


def fit_from_config(cfg: DictConfig, config_path: str | None = None) -> Any:
    """Runs `paxtrain fit` for one validated config; returns the trainer after training.

    A run directory that already holds checkpoints is resumed from the newest complete one.

    Example:
        >>> trainer = fit_from_config(compose("configs/char_rnn.yaml", []))  # doctest: +SKIP
    """
    run_dir = pathlib.Path(cfg.run_dir or f"runs/{cfg.name}-{_timestamp()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    info = _run_info(cfg, config_path)
    trainer, model, data, optimizer = build_trainer(cfg, run_dir, meta=info)
    trainer.add_hook(RunFiles(cfg, info))
    # One process speaks for a multi-process run.
    say = print if trainer.is_main_process else lambda *_: None
    say(f"paxtrain: run directory {run_dir}")
    say(model.summary() if hasattr(model, "summary") else model)
    started = time.perf_counter()
    trainer.fit(model, data, optimizer=optimizer)
    elapsed = time.perf_counter() - started
    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    shown = ", ".join(f"eval/{k}={v:.4f}" for k, v in final.items())
    say(f"paxtrain: finished at step {trainer.step} in {elapsed:.0f}s; {shown}")
    if trainer.stop_reason:
        say(f"paxtrain: {trainer.stop_reason}")
    return trainer


def load_run_config(run_dir: str | pathlib.Path, overrides: list[str]) -> DictConfig:
    """The saved config of a run directory with `overrides` applied, pointed at that directory.

    Example:
        >>> cfg = load_run_config("runs/char_rnn-20260101-120000", ["trainer.max_steps=3000"])  # doctest: +SKIP
    """
    from paxtrain.config import compose

    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE}: is it a paxtrain run directory?")
    cfg = compose(path, overrides)
    cfg.run_dir = str(pathlib.Path(run_dir))
    return cfg


def evaluate_run(
    run_dir: str | pathlib.Path, step: str = "latest", overrides: list[str] | None = None
) -> dict[str, float]:
    """Evaluates a run's checkpoint ("latest", "best" or a step number) on its eval data.

    `overrides` change the saved config, e.g. the `mesh` on other devices than the run's.

    Example:
        >>> evaluate_run("runs/char_rnn-20260101-120000", step="best")  # doctest: +SKIP
        {'loss': 1.43, 'bits_per_char': 2.07}
    """
    from paxtrain.checkpoint import CheckpointManager
    from paxtrain.train.checkpointing import CHECKPOINT_DIR

    cfg = load_run_config(run_dir, overrides or [])
    ck = cfg.trainer.checkpoint
    trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path(run_dir))
    trainer.prepare(model, data, optimizer)
    manager = CheckpointManager(
        pathlib.Path(run_dir) / CHECKPOINT_DIR, monitor=ck.monitor, mode=ck.mode, async_save=False
    )
    trainer.state, meta = manager.restore(trainer.state, step=step)
    trainer.step = int(trainer.state.step)
    manager.close()
    return trainer.eval_metrics()
