"""Building a run from a validated config: run directory, data, model, optimizer, trainer."""

from __future__ import annotations

import datetime
import importlib.metadata
import inspect
import pathlib
import platform
import subprocess
import time
from typing import Any

import jax
import optax
from omegaconf import DictConfig, OmegaConf

from paxtrain.config import check_target, locate
from paxtrain.optim import make_schedule, make_transformation
from paxtrain.train.hooks import EarlyStopping


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
        >>> sweep_overrides(["optimizer.lr=1e-3,3e-4", "trainer.max_steps=5"])
        [['optimizer.lr=1e-3', 'trainer.max_steps=5'], ['optimizer.lr=3e-4', 'trainer.max_steps=5']]
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
        >>> cfgs = assign_sweep_dirs(cfgs, jobs, "configs/char_rnn.yaml")  # doctest: +SKIP
        >>> cfgs[0].run_dir
        'runs/char_rnn-multirun-20260101-120000/0_optimizer.lr=1e-3'
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


def fit_from_config(cfg: DictConfig, config_path: str | None = None) -> Any:
    """Runs `paxtrain fit` for one validated config; returns the trainer after training.

    Example:
        >>> trainer = fit_from_config(compose("configs/char_rnn.yaml", []))  # doctest: +SKIP
    """
    import paxtrain as pax
    from paxtrain.train.trainer import Trainer

    name = cfg.name
    run_dir = pathlib.Path(cfg.run_dir or f"runs/{name}-{_timestamp()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "paxtrain": importlib.metadata.version("paxtrain"),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "git_sha": _git_sha(),
        "config_path": str(config_path) if config_path else None,
    }
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml({**resolved, "_meta": meta}))

    data = instantiate(cfg.data, "data")
    pax.seed_rng_key(cfg.seed)
    model = instantiate(cfg.model, "model", **data.info)
    callbacks = [instantiate(c, f"callbacks[{i}]") for i, c in enumerate(cfg.callbacks)]
    t = cfg.trainer
    es = t.early_stopping
    trainer = Trainer(
        t.max_steps,
        run_dir=run_dir,
        log_every=t.log_every,
        eval_every=t.eval_every,
        steps_per_call=t.steps_per_call,
        grad_accum_steps=t.grad_accum_steps,
        precision=t.precision,
        ema_decay=t.ema_decay,
        nonfinite_guard=t.nonfinite_guard,
        progress=t.progress,
        plot=t.plot,
        early_stopping=EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta)
        if es.monitor
        else None,
        hooks=callbacks,
        seed=cfg.seed,
    )
    print(f"paxtrain: run directory {run_dir}")
    print(model.summary() if hasattr(model, "summary") else model)
    started = time.perf_counter()
    trainer.fit(model, data, optimizer=build_optimizer(cfg.optimizer, t.max_steps))
    elapsed = time.perf_counter() - started
    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    shown = ", ".join(f"eval/{k}={v:.4f}" for k, v in final.items())
    print(f"paxtrain: finished {trainer.step} steps in {elapsed:.0f}s; {shown}")
    if trainer.stop_reason:
        print(f"paxtrain: {trainer.stop_reason}")
    return trainer
