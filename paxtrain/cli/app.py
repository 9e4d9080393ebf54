"""The `paxtrain` command line: `fit`, `env`, `plot`.

    paxtrain fit configs/char_rnn.yaml trainer.max_steps=500 optimizer.learning_rate.peak_value=3e-4
    paxtrain fit configs/char_rnn.yaml -m optimizer.learning_rate.peak_value=1e-3,3e-4     # one run per value
    paxtrain fit configs/char_rnn.yaml -m optimizer.learning_rate.peak_value=1e-3,3e-4 --launcher slurm  # a job each
    paxtrain fit configs/char_rnn.yaml -m optimizer.learning_rate.peak_value=1e-3,3e-4 --launcher slurm \
        --launcher-config configs/launcher/slurm.yaml                # nodes, GPUs, partition...
    paxtrain fit configs/char_rnn.yaml -m hydra/sweeper=optuna 'optimizer.learning_rate.peak_value=tag(log, interval(1e-4, 1e-2))'
    paxtrain fit configs/char_rnn.yaml --cfg job                     # print the resolved config
    paxtrain options configs/char_rnn.yaml                           # every key: type, value, help
    paxtrain fit char_rnn trainer.max_steps=500                       # a config shipped with paxtrain
    paxtrain resume runs/char_rnn-20260101-120000 trainer.max_steps=3000
    paxtrain eval runs/char_rnn-20260101-120000 --step best
    paxtrain eval runs/char_rnn-20260101-120000 mesh.data=-1 mesh.fsdp=1   # on other devices
    paxtrain summary transformer_lm mesh.fsdp=2                       # parameters, memory, FLOPs
    paxtrain env
    paxtrain plot runs/char_rnn-20260101-120000
    paxtrain data tokenize book.txt book.bin --vocab bytes            # a token file for TokenFile
    paxtrain export runs/llama-20260101-120000 --format hf --out llama_hf   # Hugging Face files

Exit codes: 0 done; 1 a job run with `--launcher local` failed (the message names its log); 2 a
config, file, device layout or checkpoint problem (one message, no traceback); 3 stopped on
non-finite steps (`trainer.on_nonfinite=stop`); 75 stopped by a preemption signal (after saving
a checkpoint, or before training started): run the same command again; 86 the step watchdog
(`trainer.watchdog`) found no step finishing, and dumped every thread's stack: restart the job.
"""

from __future__ import annotations

import argparse
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from paxtrain.cli.commands import _data, _env, _eval, _fit, _options, _plot, _resume, _sample
from paxtrain.cli.export import add_export_command, run_export
from paxtrain.cli.summary import add_summary_command, run_summary
from paxtrain.config.packaged import packaged_config_names
from paxtrain.data.tokenize import MAX_UNKNOWN_FRACTION
from paxtrain.errors import CheckpointError, ConfigError, DataError, LaunchError, LayoutError
from paxtrain.train.preemption import PREEMPTED_EXIT_CODE, PreemptedBeforeTraining, before_training

EXIT_CONFIG_ERROR = 2


USAGE_MSG = "paxtrain: {message} (see `paxtrain {command} --help`)"


FLAG_AS_KEY_MSG = (
    "paxtrain: unrecognized argument {flag}: config keys are set as overrides, e.g. `{key}={value}`"
)


BAD_STEP_MSG = "--step is {value!r}: use latest, best or a step number, e.g. `--step 500`"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `paxtrain:` line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("paxtrain").strip()
        print(
            USAGE_MSG.format(message=message, command=command).replace("  ", " "), file=sys.stderr
        )
        sys.exit(EXIT_CONFIG_ERROR)


def _step(value: str) -> str:
    if value in ("latest", "best") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError(BAD_STEP_MSG.format(value=value))


def _flag_as_key(flag: str, value: str) -> str | None:
    """`--max-steps` given as a flag: the message naming the config key it meant, if any."""
    from omegaconf import OmegaConf

    from paxtrain.config.schema import FitConfig

    leaf = flag.lstrip("-").partition("=")[0].replace("-", "_")
    value = flag.partition("=")[2] or value or "..."

    def keys(node: dict, prefix: str = "") -> list[str]:
        found = []
        for k, v in node.items():
            found += keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
        return found

    schema = OmegaConf.to_container(OmegaConf.structured(FitConfig))
    matches = [k for k in keys(schema) if k.rpartition(".")[2] == leaf]
    return FLAG_AS_KEY_MSG.format(flag=flag, key=matches[0], value=value) if matches else None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="paxtrain", description="Train JAX models with paxtrain.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_config_commands(commands)
    _add_run_commands(commands)
    add_summary_command(commands)
    commands.add_parser("env", help="print versions and the devices JAX sees")
    _add_data_commands(commands)
    add_export_command(commands)
    plot = commands.add_parser("plot", help="write curves.png for a run directory")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    return parser


def _allow_target(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--allow-target", action="append", default=[], metavar="MODULE",
        help="trust `_target_`s of this module in the run's config.yaml (repeatable)",
    )  # fmt: skip


def _restart(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--restart", action="store_true",
        help="train from step 0 where the run directory has no readable checkpoint (moving "
        "unreadable ones aside as STEP.corrupt); a readable checkpoint is always resumed",
    )  # fmt: skip


def _add_config_commands(commands: Any) -> None:
    """`fit` and `options`: what a config trains, and which keys it has."""
    fit = commands.add_parser(
        "fit",
        help="train from a YAML config with Hydra overrides",
        epilog="Every key a config can set, with its type, value and help: paxtrain options CONFIG",
    )
    fit.add_argument(
        "config",
        help="path to a YAML config, e.g. configs/char_rnn.yaml, or the name of one shipped "
        f"with paxtrain, from any directory: {', '.join(packaged_config_names())}",
    )
    fit.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.max_steps=500")
    fit.set_defaults(accepts_overrides=True)
    fit.add_argument("-m", "--multirun", action="store_true", help="one run per swept value")
    fit.add_argument("--cfg", choices=["job"], help="print the resolved config and exit")
    fit.add_argument("--launcher", choices=["local", "slurm"], help="with -m: submit via submitit")
    fit.add_argument("--launcher-config", help="YAML of launcher options (configs/launcher/)")
    _restart(fit)

    options = commands.add_parser(
        "options", help="list every key a config can set: type, value, help (then exit)"
    )
    options.add_argument("config", help="a YAML config or a packaged config's name, as for fit")
    options.add_argument("overrides", nargs="*", help="overrides, e.g. model=gru")
    options.set_defaults(accepts_overrides=True)


def _add_run_commands(commands: Any) -> None:
    """`resume`, `eval` and `sample`: what a run directory's checkpoints do next."""
    resume = commands.add_parser("resume", help="continue a run from its newest checkpoint")
    resume.add_argument("run_dir", help="a run directory written by `paxtrain fit`")
    resume.add_argument("overrides", nargs="*", help="overrides, e.g. trainer.max_steps=3000")
    resume.set_defaults(accepts_overrides=True)
    _allow_target(resume)
    _restart(resume)

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint on its eval data")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("overrides", nargs="*", help="overrides, e.g. mesh.data=-1 mesh.fsdp=1")
    evaluate.set_defaults(accepts_overrides=True)
    evaluate.add_argument(
        "--step", default="latest", type=_step, help="latest (default), best, or a step"
    )
    _allow_target(evaluate)

    sample = commands.add_parser("sample", help="continue a prompt with a run's model")
    sample.add_argument("run_dir")
    sample.add_argument("overrides", nargs="*", help="overrides, e.g. mesh.data=1")
    sample.set_defaults(accepts_overrides=True)
    sample.add_argument("--prompt", required=True, help="the text to continue")
    sample.add_argument(
        "--max-new-tokens", type=int, help="tokens to add (200, or what learned positions hold)"
    )
    sample.add_argument("--temperature", type=float, default=0.8, help="0: the likeliest")
    sample.add_argument("--top-k", type=int, help="sample among the k likeliest tokens")
    sample.add_argument("--top-p", type=float, default=1.0, help="nucleus: probability mass")
    sample.add_argument("--seed", type=int, default=0, help="the same seed, the same text")
    sample.add_argument("--step", default="latest", type=_step, help="latest, best, or a step")
    _allow_target(sample)


def _add_data_commands(commands: Any) -> None:
    """`data tokenize` and `data tokenizer train`: token files for `TokenFile`."""
    data = commands.add_parser("data", help="prepare data files")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    tokenize = data_commands.add_parser("tokenize", help="text files -> a token file (TokenFile)")
    tokenize.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="UTF-8 text files, .jsonl or .parquet tables"
    )
    tokenize.add_argument("out", metavar="OUT", help="the token file to write, e.g. train.bin")
    tokenize.add_argument("--vocab", choices=["bytes", "chars"], default="bytes")
    tokenize.add_argument(
        "--tokenizer",
        metavar="TOKENIZER_JSON",
        help="encode with this tokenizer.json instead of --vocab; an <|eos|> ends each input",
    )
    tokenize.add_argument(
        "--column", help="the text column of .jsonl/.parquet inputs, one document a row (text)"
    )
    tokenize.add_argument(
        "--force", action="store_true", help="replace OUT if it exists (an input: never)"
    )
    tokenize.add_argument(
        "--max-unknown",
        type=float,
        default=MAX_UNKNOWN_FRACTION,
        metavar="FRACTION",
        help="--vocab chars: the largest share of characters outside the vocabulary accepted "
        f"(default {MAX_UNKNOWN_FRACTION})",
    )

    tokenizer = data_commands.add_parser("tokenizer", help="train a BPE tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    train = tokenizer_commands.add_parser(
        "train", help="text files -> a byte-level BPE tokenizer.json (needs `tokenizers`)"
    )
    train.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files")
    train.add_argument("--vocab-size", type=int, required=True, help="ids, e.g. 4096")
    train.add_argument("--out", required=True, help="the tokenizer.json to write")
    train.add_argument("--force", action="store_true", help="replace --out if it exists")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `paxtrain` console script.

    Example:
        >>> main(["env"])  # doctest: +SKIP
    """
    parser = _parser()
    # Overrides may come before or after the flags (`fit cfg.yaml -m a=1,2 b=3`): argparse
    # leaves those after a flag unparsed, so they are collected here.
    args, rest = parser.parse_known_args(argv)
    unknown_flags = [a for a in rest if a.startswith("-")]
    if unknown_flags:
        after = rest[rest.index(unknown_flags[0]) + 1 :]
        hint = _flag_as_key(unknown_flags[0], after[0] if after and "=" not in after[0] else "")
        if hint:
            print(hint, file=sys.stderr)
            return EXIT_CONFIG_ERROR
    if unknown_flags or (rest and not getattr(args, "accepts_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    commands = {
        "fit": _fit,
        "options": _options,
        "resume": _resume,
        "eval": _eval,
        "plot": _plot,
        "data": _data,
        "sample": _sample,
        "export": run_export,
        "summary": run_summary,
    }
    try:
        # A preemption signal while data and model are built: nothing to save, exit 75.
        with before_training(), warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return _env() if args.command == "env" else commands[args.command](args)
    except PreemptedBeforeTraining as stopped:
        print(stopped, file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except ConfigError as error:
        return _report(f"config error: {error}", EXIT_CONFIG_ERROR)
    except (FileNotFoundError, CheckpointError, LayoutError, DataError) as error:
        _quiet_failing_writers_at_exit()
        return _report(str(error), EXIT_CONFIG_ERROR)
    except LaunchError as error:
        return _report(str(error), 1)


def _warning_line(message: Warning | str, category: type, *args: Any, **kwargs: Any) -> None:
    """A warning as one `paxtrain:` line (a recovery: a checkpoint fallen back from, a save
    lost), without Python's file, line and source line, which are paxtrain's, not the user's."""
    print(f"paxtrain: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _quiet_failing_writers_at_exit() -> None:
    """After a checkpoint problem was reported in one line (a full disk, say), the event-file
    writer's exit-time flush and thread may fail the same way; their tracebacks would bury
    that line, and add nothing to it."""

    def unraisable(info: Any) -> None:
        if not isinstance(info.exc_value, OSError):
            previous_unraisable(info)

    def thread_error(args: Any) -> None:
        if not isinstance(args.exc_value, OSError):
            previous_thread(args)

    previous_unraisable, previous_thread = sys.unraisablehook, threading.excepthook
    sys.unraisablehook, threading.excepthook = unraisable, thread_error


def _report(message: str, code: int) -> int:
    """Prints an error as one `paxtrain:` line (easy to grep in a job's log); returns `code`."""
    print("paxtrain: " + " ".join(message.split()), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
