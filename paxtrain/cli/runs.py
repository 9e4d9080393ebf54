"""Run directories: the files a run writes beside its checkpoints, and their safety (a run
directory that is a file, unwritable, or a resume of targets from elsewhere)."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import subprocess
from typing import Any

import jax
from omegaconf import DictConfig, OmegaConf

from paxtrain.config.optimizer import ALIASES
from paxtrain.errors import CheckpointError, ConfigError
from paxtrain.train.hooks import Hook


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


RUN_INFO_FILE = "run.json"


CONFIG_FILE = "config.yaml"


def config_hash(cfg: DictConfig) -> str:
    """A short hash of the config as the run saves it (`config.yaml`, unresolved), recorded in
    `run.json` and with each checkpoint; a resume compares it (`config_changes`).

    Example:
        >>> len(config_hash(OmegaConf.create({"a": 1})))
        12
    """
    return hashlib.sha256(OmegaConf.to_yaml(cfg).encode()).hexdigest()[:12]


def config_changes(run_dir: pathlib.Path, cfg: DictConfig) -> list[str]:
    """The keys whose values `cfg` changes from the config a run directory saved, as
    `key: old -> new`, when its hash differs from the one in the run's `run.json`; none for a
    new run or the same config.

    Example:
        >>> config_changes(pathlib.Path("runs/char_rnn"), cfg)  # doctest: +SKIP
        ['trainer.max_steps: 1000 -> 3000']
    """
    info, saved = run_dir / RUN_INFO_FILE, run_dir / CONFIG_FILE
    if not (info.is_file() and saved.is_file()):
        return []
    if json.loads(info.read_text()).get("config_hash") == config_hash(cfg):
        return []
    before = _leaves(OmegaConf.to_container(OmegaConf.load(saved), resolve=False))
    after = _leaves(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    missing = "(not set)"
    return [
        f"{key}: {before.get(key, missing)} -> {after.get(key, missing)}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key, missing) != after.get(key, missing)
    ]


def _leaves(node: Any, key: str = "") -> dict[str, Any]:
    """The values of a plain config tree by their dotted keys (lists as one value)."""
    if not isinstance(node, dict):
        return {key: node}
    found: dict[str, Any] = {}
    for k, v in node.items():
        found.update(_leaves(v, f"{key}.{k}" if key else str(k)))
    return found


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


def _checkpoint_steps(run_dir: pathlib.Path) -> list[int]:
    """The steps saved in a run directory's checkpoints (none for a new run)."""
    from paxtrain.checkpoint.store import CheckpointManager
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
    from paxtrain.checkpoint.store import CheckpointManager

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


NO_RUN_DIR_MSG = (
    "Run directory {run_dir} does not exist: check the path (`paxtrain resume RUN_DIR`)."
)


NOT_A_RUN_MSG = "{run_dir} has no {file}: is it a paxtrain run directory?"


NOTHING_TO_RESUME_MSG = (
    "{run_dir} has no checkpoint to resume from{why}. Start the run with `paxtrain fit CONFIG "
    "run_dir={run_dir}`, or train it from step 0 with its saved config: `paxtrain resume "
    "{run_dir} --restart`."
)


def check_resumable(run_dir: pathlib.Path, cfg: DictConfig, restart: bool = False) -> None:
    """Refuses `paxtrain resume` of a run directory without any checkpoint (a resume that
    silently trains from step 0 is no resume), unless `restart`. Step directories that are
    not readable, and ones moved aside, are the trainer's to report (`CheckpointManager.resume`).

    Example:
        >>> check_resumable(pathlib.Path("runs/char_rnn"), cfg)  # doctest: +SKIP
    """
    from paxtrain.train.checkpointing import CHECKPOINT_DIR

    directory = run_dir / CHECKPOINT_DIR
    saved = list(directory.iterdir()) if directory.is_dir() else []
    if restart or any(p.name.isdigit() or ".corrupt" in p.name for p in saved):
        return
    why = (
        ""
        if cfg.trainer.checkpoint.enabled
        else " (it trained with trainer.checkpoint.enabled=false)"
    )
    raise CheckpointError(NOTHING_TO_RESUME_MSG.format(run_dir=run_dir, why=why))


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
    from paxtrain.config.composition import compose

    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not pathlib.Path(run_dir).is_dir():
        raise ConfigError(NO_RUN_DIR_MSG.format(run_dir=run_dir))
    if not path.is_file():
        raise ConfigError(NOT_A_RUN_MSG.format(run_dir=run_dir, file=CONFIG_FILE))
    check_run_targets(path, overrides, allow_targets)
    cfg = compose(path, [*legacy_recipe_overrides(path), *overrides])
    cfg.run_dir = str(pathlib.Path(run_dir))
    return cfg
