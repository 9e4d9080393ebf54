"""The commands behind `paxtrain fit/resume/eval/options/env/data/plot`; one fit is run by
`cli.fit`, which the jobs of a launched sweep (`cli.launch`) call too."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import pathlib
import platform
import sys
from typing import Any

import jax
from omegaconf import OmegaConf

from paxtrain.cli.build import build_trainer
from paxtrain.cli.fit import exit_code, fit_from_config
from paxtrain.cli.runs import check_resumable, load_run_config
from paxtrain.config.packaged import find_config
from paxtrain.errors import ConfigError
from paxtrain.train.preemption import raise_if_signalled


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


NO_MONITOR_MSG = (
    "`--step best` needs the metric that ranks checkpoints, and this run recorded none: train "
    "with `trainer.checkpoint.monitor=eval/loss` (and `trainer.checkpoint.keep_best=1` to keep "
    "the best one), or evaluate `--step latest` or a step number."
)


DEFAULT_NEW_TOKENS = 200  # `paxtrain sample` without --max-new-tokens
NO_VOCABULARY_MSG = (
    "{run_dir}'s data has no vocabulary to encode the prompt with (a token file of ids from "
    "elsewhere): train on text, or on a token file written with `--tokenizer`."
)
NO_DECODER_MSG = (
    "{model} cannot be sampled with a cache: `paxtrain sample` needs a model with "
    "`decoder(batch_size, max_len)` (the recipes llama_lm, transformer_lm and char_rnn have one)."
)
PROMPT_TOO_LONG_MSG = (
    "The prompt is {length} tokens, longer than the {seq_len} the model was trained on "
    "(`data.seq_len`): shorten it."
)


def restore_run(
    run_dir: str | pathlib.Path,
    step: str = "latest",
    overrides: list[str] | None = None,
    allow_targets: tuple[str, ...] = (),
) -> Any:
    """A trainer prepared for a run's config, holding the state of one of its checkpoints
    ("latest", "best" or a step number), read through the store (integrity-checked). "latest"
    is the newest checkpoint: when it is unreadable, a CheckpointError names it and the newest
    readable step, never a silent restore of an older one.

    `overrides` change the saved config, e.g. the `mesh` on other devices than the run's.

    Example:
        >>> trainer = restore_run("runs/char_rnn-20260101-120000", step="best")  # doctest: +SKIP
        >>> trainer.state.model  # doctest: +SKIP
    """
    from paxtrain.checkpoint.store import CheckpointManager
    from paxtrain.train.checkpointing import CHECKPOINT_DIR
    from paxtrain.train.monitor import Monitor

    cfg = load_run_config(run_dir, overrides or [], allow_targets)
    ck = cfg.trainer.checkpoint
    if step == "best" and not ck.monitor:
        raise ConfigError(NO_MONITOR_MSG)
    trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path(run_dir))
    trainer.prepare(model, data, optimizer)
    monitor = Monitor(ck.monitor, ck.mode) if ck.monitor else None  # "loss" is "eval/loss"
    manager = CheckpointManager(
        pathlib.Path(run_dir) / CHECKPOINT_DIR,
        monitor=monitor and monitor.key,
        mode=ck.mode,
        read_only=True,
    )
    try:
        trainer.state, _ = manager.restore(trainer.checkpoint_state, step=step, fall_back=False)
    finally:
        manager.close()
    trainer.step = int(trainer.state.step)
    raise_if_signalled()  # before the evaluation or sampling, which may take long
    return trainer


def evaluate_run(
    run_dir: str | pathlib.Path,
    step: str = "latest",
    overrides: list[str] | None = None,
    allow_targets: tuple[str, ...] = (),
) -> tuple[int, dict[str, float]]:
    """Evaluates a run's checkpoint ("latest", "best" or a step number) on its eval data;
    returns the step of the checkpoint evaluated and the metrics.

    Example:
        >>> evaluate_run("runs/char_rnn-20260101-120000", step="best")  # doctest: +SKIP
        (1500, {'loss': 1.43, 'bits_per_char': 2.07})
    """
    trainer = restore_run(run_dir, step, overrides, allow_targets)
    return trainer.step, trainer.eval_metrics()


def sample_run(run_dir: str | pathlib.Path, prompt: str, options: dict[str, Any]) -> str:
    """The text a run's model (one of its checkpoints) writes after `prompt`, decoded with its
    cache (`paxtrain.recipes.sampling.sample`).

    Args:
      run_dir: a run directory.
      prompt: the text to continue, encoded with the run's vocabulary.
      options: `max_new_tokens` (None or absent: `DEFAULT_NEW_TOKENS`, fewer if the model's
        learned positions hold fewer), `temperature`, `top_k`, `top_p`, `seed`, and `step`,
        `overrides`, `allow_targets` as for `restore_run`.

    Example:
        >>> sample_run("runs/llama", "def ", {"max_new_tokens": 50})  # doctest: +SKIP
        'self, x):\n        return ...'
    """
    from paxtrain.recipes.sampling import check_sampling, room_for, sample

    temperature, top_k = options.get("temperature", 0.8), options.get("top_k")
    top_p = options.get("top_p", 1.0)
    try:  # before anything is built
        check_sampling(temperature, top_k, top_p)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    trainer = restore_run(
        run_dir, options.get("step", "latest"), options.get("overrides"),
        options.get("allow_targets", ()),
    )  # fmt: skip
    vocab, model = getattr(trainer.data, "vocab", None), trainer.state.model.eval()
    if vocab is None:
        raise ConfigError(NO_VOCABULARY_MSG.format(run_dir=run_dir))
    if not hasattr(model, "decoder"):
        raise ConfigError(NO_DECODER_MSG.format(model=type(model).__name__))
    ids = vocab.encode(prompt)
    seq_len = trainer.data.info.get("seq_len")
    if seq_len and len(ids) > seq_len:
        raise ConfigError(PROMPT_TOO_LONG_MSG.format(length=len(ids), seq_len=seq_len))
    key = jax.random.PRNGKey(options.get("seed", 0))
    new_tokens = options.get("max_new_tokens")
    if new_tokens is None:  # as many as asked for by default, or as a model's positions hold
        new_tokens = room_for(model, len(ids), DEFAULT_NEW_TOKENS)
    try:
        new = sample(model, ids, new_tokens, key, temperature, top_k, top_p)
    except ValueError as error:  # an empty prompt; more positions than learned ones
        raise ConfigError(str(error)) from None
    return vocab.decode(new)


def _fit(args: argparse.Namespace) -> int:

    from paxtrain.cli.multirun import check_hydra_flags, run_hydra_sweep, uses_hydra
    from paxtrain.cli.sweep import run_grid, sweep_overrides
    from paxtrain.config.composition import compose

    config = find_config(args.config)
    # `_target_` objects may live in the user's project: importable from where paxtrain runs,
    # and from the project root of a config file (the parent of its `configs/` folder; not
    # through links, which would lead into paxtrain's own folder from the repository's root).
    roots = [os.getcwd()]
    if config == args.config:
        roots.append(str(pathlib.Path(os.path.abspath(config)).parent.parent))
    sys.path[:0] = roots
    if args.multirun and uses_hydra(args.overrides):  # Hydra's sweeper and launcher plugins
        check_hydra_flags(args.overrides, args.launcher)
        return run_hydra_sweep(
            config, args.overrides, roots, print_config=args.cfg == "job", restart=args.restart
        )
    jobs = sweep_overrides(args.overrides) if args.multirun else [list(args.overrides)]
    configs = [compose(config, overrides) for overrides in jobs]
    if args.cfg == "job":
        for cfg in configs:
            print(OmegaConf.to_yaml(cfg), end="")
        return 0
    if args.launcher_config and not args.launcher:
        raise ConfigError("--launcher-config needs --launcher local or --launcher slurm")
    if args.launcher and not args.multirun:
        raise ConfigError("--launcher submits the jobs of a sweep: use it with -m")
    if args.multirun:
        from paxtrain.cli.sweep import assign_sweep_dirs

        configs = assign_sweep_dirs(configs, jobs, config)
    if args.launcher:
        from paxtrain.cli.launch import launcher_options, submit_sweep, wait_for_sweep

        options = launcher_options(args.launcher, args.launcher_config)
        # The jobs import `_target_`s from the same project paths put in front above.
        jobs = submit_sweep(
            configs, config, args.launcher, options, jobs, sys_path=roots, restart=args.restart
        )
        return wait_for_sweep(jobs, configs) if args.launcher == "local" else 0
    if args.multirun:
        return run_grid(configs, jobs, config, restart=args.restart)
    return exit_code(fit_from_config(configs[0], config_path=config, restart=args.restart))


def _options(args: argparse.Namespace) -> int:
    from paxtrain.config.composition import compose
    from paxtrain.config.keys import config_options, format_options

    config = find_config(args.config)
    sys.path[:0] = [os.getcwd()]
    cfg = compose(config, list(args.overrides), check=False)  # `???` values: listed, to set
    print(format_options(config_options(cfg)))
    return 0


def _resume(args: argparse.Namespace) -> int:
    sys.path[:0] = [os.getcwd()]
    cfg = load_run_config(args.run_dir, list(args.overrides), tuple(args.allow_target))
    check_resumable(pathlib.Path(args.run_dir), cfg, restart=args.restart)
    return exit_code(fit_from_config(cfg, restart=args.restart))


def _eval(args: argparse.Namespace) -> int:
    sys.path[:0] = [os.getcwd()]
    step, metrics = evaluate_run(
        args.run_dir, args.step, list(args.overrides), tuple(args.allow_target)
    )
    raise_if_signalled()  # a signal during the evaluation: exit 75, no metrics line
    # Which checkpoint was evaluated, on the line of its metrics: "latest" names no step.
    shown = " ".join(f"eval/{k}={v:.6g}" for k, v in metrics.items())
    print(f"step={step} run_dir={args.run_dir} {shown}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    sys.path[:0] = [os.getcwd()]
    options = {
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
        "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "step": args.step,
        "overrides": list(args.overrides), "allow_targets": tuple(args.allow_target),
    }  # fmt: skip
    text = sample_run(args.run_dir, args.prompt, options)
    raise_if_signalled()
    print(args.prompt + text)
    return 0


def _env() -> int:
    print(environment_report())
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "tokenizer":
        return _train_tokenizer(args)
    from paxtrain.data.tokenize import describe_unknown, tokenize_files

    meta = tokenize_files(
        args.inputs, args.out, args.vocab, args.force, args.max_unknown, args.tokenizer,
        args.column,
    )  # fmt: skip
    print(f"paxtrain: wrote {meta['num_tokens']} tokens ({meta['vocab']}) to {args.out}")
    if unknown := describe_unknown(meta):
        print(f"paxtrain: {unknown}")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from paxtrain.data.bpe import describe, train_bpe

    vocab = train_bpe(args.inputs, args.vocab_size, args.out, force=args.force)
    print(f"paxtrain: wrote {describe(vocab)}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from paxtrain.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
