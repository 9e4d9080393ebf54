"""`paxtrain summary CONFIG [overrides]`: what a config trains and what it needs, without
training (`Trainer.summary`): parameters by module, bytes per device for the layout, the
compiled step's memory, model FLOPs and whether it fits.

    paxtrain summary transformer_lm model.num_layers=12 model.model_dim=768 mesh.fsdp=2
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from paxtrain.config.packaged import find_config


def add_summary_command(commands: argparse._SubParsersAction) -> None:
    """Adds `summary` to the `paxtrain` command line's subcommands.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_summary_command(parser.add_subparsers())
    """
    summary = commands.add_parser(
        "summary", help="parameters, memory per device, FLOPs and a verdict, without training"
    )
    summary.add_argument("config", help="a YAML config or a packaged config's name, as for fit")
    summary.add_argument("overrides", nargs="*", help="overrides, e.g. mesh.fsdp=2")
    summary.set_defaults(accepts_overrides=True)


def run_summary(args: argparse.Namespace) -> int:
    """Prints the summary of the config `args.config` with `args.overrides`; returns 0.

    Example:
        >>> run_summary(argparse.Namespace(config="char_rnn", overrides=[]))  # doctest: +SKIP
        0
    """
    from paxtrain.cli.build import build_trainer
    from paxtrain.config.composition import compose

    config = find_config(args.config)
    sys.path[:0] = [os.getcwd()]
    cfg = compose(config, list(args.overrides))
    # Nothing is written: the run directory only tells `build_trainer` there is no checkpoint.
    run_dir = pathlib.Path(cfg.run_dir or f"runs/{cfg.name}-summary")
    trainer, model, data, optimizer = build_trainer(cfg, run_dir)
    print(trainer.summary(model, data, optimizer))
    return 0
