"""`paxtrain export RUN --format hf --out DIR`: a run's model as a Hugging Face checkpoint.

    paxtrain export runs/llama --format hf --out llama_hf               # the newest checkpoint
    paxtrain export runs/llama --format hf --out llama_hf --step 500 --max-shard-size 2GB
    paxtrain export runs/llama_lora --format hf --out merged --merge     # LoRA folded in

The model is restored as `paxtrain eval` restores it (through the store, integrity-checked; a
LoRA run's frozen base read from its `init_from` again); `--merge` folds a LoRA run's adapters
into plain weights (`nn.merge_lora`), as a Hugging Face checkpoint needs them. `config.json`
gets what the model does not know from the Hugging Face checkpoint the run started from
(`init_from=hf:DIR`: its token ids, `max_position_embeddings`) when it is still there, else the
run's `data.seq_len`. A run whose data was tokenized with a BPE `tokenizer.json` gets that file
beside the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from typing import Any

FORMATS = ("hf",)

OUT_NOT_EMPTY_MSG = """\
--out {out} is not empty: `paxtrain export` does not write over files. Choose another --out, or \
add --force to replace the checkpoint files in it."""

OUT_IS_FILE_MSG = "--out {out} is a file: give a directory to write the checkpoint into."

NO_CHECKPOINT_MSG = """\
{run_dir} has no checkpoint to export: train it with checkpointing on \
(`trainer.checkpoint.enabled=true`, the default) first."""

NO_STEP_MSG = "{run_dir} has no checkpoint of step {step}; it has {steps}: pass one of those."

SHARD_SIZE_MSG = """\
--max-shard-size {value!r} is not a size: give bytes or a number with KB, MB or GB, e.g. \
`--max-shard-size 2GB`."""

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
# The base checkpoint's config.json entries a run's model does not hold.
BASE_CONFIG_KEYS = ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")


def parse_size(value: str) -> int:
    """Bytes of a size written as `5GB`, `500MB`, `64KB` or a number of bytes.

    Example:
        >>> parse_size("2GB"), parse_size("64KB"), parse_size("1000")
        (2000000000, 64000, 1000)
    """
    from paxtrain.errors import ConfigError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", value.upper())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(SHARD_SIZE_MSG.format(value=value))
    return int(float(match.group(1)) * UNITS[match.group(2)])


def add_export_command(commands: Any) -> None:
    """The `export` subcommand's arguments.

    Example:
        >>> add_export_command(argparse.ArgumentParser().add_subparsers())  # doctest: +SKIP
    """
    export = commands.add_parser("export", help="write a run's model as a Hugging Face checkpoint")
    export.add_argument("run_dir", help="a run directory written by `paxtrain fit`")
    export.add_argument("--format", required=True, choices=FORMATS, help="hf: Hugging Face")
    export.add_argument("--out", required=True, help="the directory to write")
    export.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
    export.add_argument("--merge", action="store_true", help="fold LoRA adapters into the weights")
    export.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)"
    )
    export.add_argument("--force", action="store_true", help="write into a non-empty --out")
    export.add_argument(
        "--allow-target", action="append", default=[], metavar="MODULE",
        help="trust `_target_`s of this module in the run's config.yaml (repeatable)",
    )  # fmt: skip


def _check_out(out: pathlib.Path, force: bool) -> None:
    """Refuses a file, or a non-empty directory without `force`."""
    from paxtrain.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(OUT_IS_FILE_MSG.format(out=out))
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(OUT_NOT_EMPTY_MSG.format(out=out))


def _remove_previous_export(out: pathlib.Path) -> None:
    """The files an export writes, gone from `out`: a stale shard of an earlier export would
    otherwise sit beside the new index (other files stay)."""
    for stale in [*out.glob("model*.safetensors*"), out / "tokenizer.json"]:
        stale.unlink(missing_ok=True)


def _checkpoint_step(run_dir: pathlib.Path, step: int | None) -> int:
    from paxtrain.cli.runs import _checkpoint_steps
    from paxtrain.errors import ConfigError

    steps = _checkpoint_steps(run_dir)
    if not steps:
        raise ConfigError(NO_CHECKPOINT_MSG.format(run_dir=run_dir))
    if step is None:
        return max(steps)
    if step not in steps:
        raise ConfigError(NO_STEP_MSG.format(run_dir=run_dir, step=step, steps=steps))
    return step


def _extra_config(cfg: Any, data: Any) -> dict[str, Any]:
    """config.json entries the model does not hold: from the run's base checkpoint, its data."""
    from paxtrain.checkpoint.finetune import HF_PREFIX
    from paxtrain.data.bpe import BpeVocab

    extra: dict[str, Any] = {}
    if data.info.get("seq_len"):
        extra["max_position_embeddings"] = data.info["seq_len"]
    vocab = getattr(data, "vocab", None)
    if isinstance(vocab, BpeVocab):
        extra.update(bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id)
    base = str(cfg.get("init_from") or "")
    base_config = pathlib.Path(base[len(HF_PREFIX) :]) / "config.json"
    if base.startswith(HF_PREFIX) and base_config.is_file():
        values = json.loads(base_config.read_text(encoding="utf-8"))
        extra.update({k: values[k] for k in BASE_CONFIG_KEYS if k in values})
    return extra


def export_run(
    run_dir: str | pathlib.Path,
    out: str | pathlib.Path,
    step: int | None = None,
    merge: bool = False,
    max_shard_bytes: int | None = None,
    force: bool = False,
    allow_targets: tuple[str, ...] = (),
) -> list[str]:
    """Writes the model of one of a run's checkpoints (default: the newest) into `out` as a
    Hugging Face checkpoint; returns the names of the files written.

    Example:
        >>> export_run("runs/llama", "llama_hf")  # doctest: +SKIP
        ['config.json', 'model.safetensors']
    """
    from paxtrain.cli.commands import restore_run
    from paxtrain.cli.runs import load_run_config
    from paxtrain.data.bpe import BpeVocab
    from paxtrain.hf.export import export_hf
    from paxtrain.nn.lora import merge_lora

    run_dir, out = pathlib.Path(run_dir), pathlib.Path(out)
    _check_out(out, force)
    cfg = load_run_config(run_dir, [], allow_targets)
    step = _checkpoint_step(run_dir, step)
    # The road of `paxtrain eval`: the whole state restored, a LoRA run's base from its init_from.
    trainer = restore_run(run_dir, step, allow_targets=allow_targets)
    model, data = trainer.state.model, trainer.data
    if merge:
        model = merge_lora(model)
    vocab = getattr(data, "vocab", None)
    tokenizer = vocab.path if isinstance(vocab, BpeVocab) else None
    _remove_previous_export(out)
    return export_hf(model, out, _extra_config(cfg, data), max_shard_bytes, tokenizer)


def run_export(args: argparse.Namespace) -> int:
    """`paxtrain export`: exports, then names the files written.

    Example:
        >>> run_export(parser.parse_args(["export", "runs/x", "--format", "hf", "--out", "o"]))  # doctest: +SKIP
        0
    """
    sys.path[:0] = [os.getcwd()]
    written = export_run(
        args.run_dir, args.out, args.step, args.merge, parse_size(args.max_shard_size),
        args.force, tuple(args.allow_target),
    )  # fmt: skip
    print(f"paxtrain: wrote {args.out}: {', '.join(written)}")
    return 0
