"""Building a run from a validated config: data, model, optimizer, hooks and the trainer."""

from __future__ import annotations

import functools
import inspect
import pathlib
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from paxtrain.cli.runs import _checkpoint_steps, _saved_meta
from paxtrain.config.arguments import naming_keys
from paxtrain.config.optimizer import build_optimizer, with_horizon
from paxtrain.config.targets import check_target, locate
from paxtrain.errors import ArgumentError, ConfigError
from paxtrain.train.hooks import EarlyStopping

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


HF_RECIPE_MSG = """\
init_from=hf:{directory} holds a {architecture}, which the {recipe} recipe builds, but \
`model._target_` is {target}: fine-tune it with that recipe (`paxtrain fit {recipe} \
init_from=hf:{directory}`)."""

HF_DATA_MSG = """\
init_from=hf:{directory} has {what} of {hf_size}, but the data's is {data_size}: {why}. \
{fix}"""

# What the data may not exceed of an imported model: (its info key, what, why, the fix).
HF_DATA_LIMITS = (
    (
        "vocab_size", "a vocabulary", "the embedding has no row for the larger ids",
        "Tokenize the data with the checkpoint's tokenizer, or with a vocabulary as small.",
    ),
    (
        "seq_len", "a context (position embeddings)", "later positions have no embedding",
        "Set `data.seq_len` to at most the checkpoint's.",
    ),
)  # fmt: skip

HF_MODEL_MSG = "paxtrain: the model's settings from {config}: {settings}"


def with_hf_model(cfg: DictConfig, run_dir: pathlib.Path) -> DictConfig:
    """`cfg` with the model's architecture taken from the Hugging Face checkpoint it starts
    from (`init_from=hf:DIR`): the keys `DIR/config.json` decides (sizes, head counts, RoPE,
    norm epsilon, tied head) replace the recipe's, and are printed; the others (`scan_layers`,
    `remat`, `attention`, `dropout`) stay the recipe's. The run saves the result, so a resume
    needs no DIR. Unchanged without `hf:`, or for a run directory that already has checkpoints
    (its saved config has the settings).

    Example:
        >>> cfg = with_hf_model(compose("llama_lm", ["init_from=hf:DIR"]), run_dir)  # doctest: +SKIP
        paxtrain: the model's settings from DIR/config.json: vocab_size=128, num_layers=2, ...
    """
    from paxtrain.checkpoint.finetune import HF_PREFIX
    from paxtrain.hf.config import CONFIG_FILE, read_config

    source = cfg.init_from or ""
    if not source.startswith(HF_PREFIX) or _checkpoint_steps(run_dir):
        return cfg
    directory = source[len(HF_PREFIX) :]
    architecture, settings = read_config(directory)
    if cfg.model.get("_target_") != architecture.recipe:
        raise ConfigError(
            HF_RECIPE_MSG.format(
                directory=directory, architecture=architecture.name,
                recipe=architecture.recipe.split(".")[2], target=cfg.model.get("_target_"),
            )
        )  # fmt: skip
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in settings.items():
            cfg.model[key] = value
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    print(HF_MODEL_MSG.format(config=f"{directory}/{CONFIG_FILE}", settings=shown), flush=True)
    return cfg


def check_hf_data(cfg: DictConfig, info: dict[str, Any]) -> None:
    """A ConfigError when the data needs more token ids or positions than the imported
    model has (`with_hf_model` set its `vocab_size` and, for GPT-2, `seq_len`).

    Example:
        >>> check_hf_data(cfg, {"vocab_size": 98, "seq_len": 128})  # doctest: +SKIP
    """
    for key, what, why, fix in HF_DATA_LIMITS:
        data_size, hf_size = info.get(key), cfg.model.get(key)
        if data_size is not None and hf_size is not None and data_size > hf_size:
            raise ConfigError(
                HF_DATA_MSG.format(
                    directory=cfg.init_from.partition(":")[2], what=what, hf_size=hf_size,
                    data_size=data_size, why=why, fix=fix,
                )
            )  # fmt: skip


@naming_keys()  # a rule an object's constructor refuses, reported as the key that set it
def build_trainer(
    cfg: DictConfig,
    run_dir: pathlib.Path,
    meta: dict[str, Any] | None = None,
    horizon: int | None = None,
    restart: bool = False,
):
    """The data, model, optimizer and `Trainer` a validated config describes; the optimizer's
    schedule spans `horizon` steps (default `trainer.max_steps`); `restart`: the checkpointing
    hook may start from step 0 where no checkpoint is readable (`--restart`).

    The model comes as the function that builds it (frozen by `freeze`), so that the trainer
    builds the state sharded; `init_from`'s parameters are read into that layout (see
    `Trainer.prepare`).

    Example:
        >>> trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path("runs/x"))  # doctest: +SKIP
    """
    import paxtrain as pax
    from paxtrain.checkpoint.finetune import HF_PREFIX, freeze_by_path, load_parameters
    from paxtrain.nn.lora import apply_lora
    from paxtrain.train import Layout, StepSettings, Trainer

    if cfg.parallel.distributed:
        join_processes()
    data = instantiate(cfg.data, "data")
    if (cfg.init_from or "").startswith(HF_PREFIX):
        check_hf_data(cfg, data.info)

    lora = cfg.finetune.lora

    def model() -> pax.Module:
        # Called by the trainer under `jax.jit` with the layout's shardings: built sharded.
        built = instantiate(cfg.model, "model", **data.info)
        try:
            built = freeze_by_path(built, list(cfg.freeze)) if cfg.freeze else built
        except ValueError as error:
            raise ConfigError(f"`freeze`: {error}") from None
        if lora.rank is None:
            return built
        # The base weights keep their paths, so `init_from` loads them into the adapted model.
        with naming_keys():
            return apply_lora(built, **arguments_for(apply_lora, lora))

    include = list(cfg.init_from_include)
    init_from = functools.partial(load_parameters, source=cfg.init_from, include=include)
    # A run directory with checkpoints restores every parameter from them (or fails naming the
    # damaged ones), so `init_from` is read only for a fresh start: a resume or an eval of a
    # fine-tuned run then works after the run it started from is gone. A LoRA run's checkpoints
    # hold only the adapters: its base is read from `init_from` every time (and checked).
    restores = cfg.trainer.checkpoint.enabled and bool(_checkpoint_steps(run_dir))
    restores = restores and lora.rank is None
    t, rules = cfg.trainer, cfg.parallel.tensor_rules  # rules None: the default rules
    trainer = Trainer(
        **arguments_for(Trainer, t),
        run_dir=run_dir,
        hooks=build_hooks(cfg, meta, restart),
        step=StepSettings(**arguments_for(StepSettings, t)),
        layout=Layout(
            mesh=dict(cfg.mesh),
            strategy=str(cfg.parallel.strategy),
            **({} if rules is None else {"tensor_rules": OmegaConf.to_container(rules)}),
        ),
        seed=cfg.seed,
        init_from=init_from if cfg.init_from and not restores else None,
    )
    trainer.loggers = _loggers(t.loggers)
    return trainer, model, data, build_optimizer(with_horizon(cfg, horizon).optimizer)


def build_hooks(
    cfg: DictConfig, meta: dict[str, Any] | None = None, restart: bool = False
) -> list[Any]:
    """The hooks a validated config describes: `default_hooks` from the `trainer` section
    (its `early_stopping`, `checkpoint` and `profile` sub-sections build those hooks), with
    the `callbacks` besides; `meta` is saved with each checkpoint, `restart` as for
    `Checkpointing`.

    Example:
        >>> [type(h).__name__ for h in build_hooks(cfg)][:3]  # doctest: +SKIP
        ['TrainMetrics', 'Throughput', 'Evaluation']
    """
    from paxtrain.train import default_hooks
    from paxtrain.train.checkpointing import Checkpointing
    from paxtrain.train.profile import Profile

    t, es, ck = cfg.trainer, cfg.trainer.early_stopping, cfg.trainer.checkpoint
    callbacks = [instantiate(c, f"callbacks[{i}]") for i, c in enumerate(cfg.callbacks)]
    # A LoRA run saves its adapters, not the frozen base `init_from` loads (`frozen_base`).
    base = cfg.init_from if cfg.finetune.lora.rank is not None else None
    if t.profile.start_step is not None:  # a jax.profiler trace of some steps
        callbacks.append(Profile(**arguments_for(Profile, t.profile)))
    return default_hooks(
        **arguments_for(default_hooks, t),
        early_stopping=EarlyStopping(**arguments_for(EarlyStopping, es)) if es.monitor else None,
        checkpointing=Checkpointing(
            **arguments_for(Checkpointing, ck), meta=meta, restart=restart, frozen_base=base
        )
        if ck.enabled
        else None,
        hooks=callbacks,
    )


def _loggers(entries: list[Any]) -> list[Any]:
    """The `trainer.loggers` entries: names, each checked by the loggers' own rule
    (`check_logger_name`), and the Logger objects that `_target_` sections build.

    Example:
        >>> _loggers(["jsonl", "tensorbord"])
        Traceback (most recent call last):
        paxtrain.errors.ArgumentError: Unknown logger 'tensorbord'; choose from ['jsonl', 'mlflow', 'tensorboard', 'wandb'], or pass a Logger object.
    """
    from paxtrain.train.logger import check_logger_name

    loggers = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            loggers.append(instantiate(entry, f"trainer.loggers[{i}]"))
            continue
        try:
            check_logger_name(entry)
        except ValueError as error:
            raise ArgumentError(f"loggers[{i}]", str(error)) from None
        loggers.append(entry)
    return loggers
