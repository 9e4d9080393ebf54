"""Checkpoints of a `TrainState` on Orbax's `CheckpointManager`.

One checkpoint is a step directory with two items: `state`, every array of the state keyed by
its path (`model.layers.0.weight`), and `meta`, a JSON record (step, data position, config
hash, versions). Saving is asynchronous by default: training goes on while Orbax writes to a
temporary directory, which it renames only when complete, so a process killed mid-save leaves
the previous checkpoints intact. Restoring checks every path, shape and dtype against the state
it restores into before reading anything, and falls back to an older checkpoint when the newest
one cannot be read. Each checkpoint records a fingerprint of every array (Orbax keeps no checksum
of array data), computed on the devices and verified on restore, so a flipped byte is caught
instead of resumed from, on one process or several. A writer moves a corrupt or unfinished step
directory aside (`STEP.corrupt`, never deleted) only when an older checkpoint is readable to fall
back to, so the run can save that step again; when none is readable it changes nothing on disk.
A reader (`read_only`) never changes anything.

Example:
    >>> manager = CheckpointManager("runs/demo/checkpoints", keep_last=2)  # doctest: +SKIP
    >>> manager.save(state, meta={"config_hash": "..."})  # doctest: +SKIP
    >>> state, meta = manager.restore(state)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from paxtrain.checkpoint import frozen_base as base
from paxtrain.checkpoint.integrity import (
    CHECKSUM_MSG,
    _ChecksumMismatch,
    array_checksums,
    array_fingerprints,
)
from paxtrain.core.tree import path_str
from paxtrain.errors import CheckpointError

log = logging.getLogger(__name__)


CHECKPOINT_DIR = "checkpoints"  # a run directory's checkpoints: RUN_DIR/checkpoints


# Orbax warnings about what this module does on purpose: saving at a step without evaluation
# (kept by `keep_last` only) and opening a directory read-only (a reader).
_EXPECTED_ORBAX_WARNINGS = (
    "did not provide metrics", "read_only=True", "directory is read only",
    # a record this module reads by its item handler alone (`meta`), and the finalization of
    # a save whose directory vanished (warned about, in one line)
    "Metadata file does not exist",
)  # fmt: skip


class _QuietExpectedWarnings(logging.Filter):
    """Drops those warnings, and Orbax's errors: a failed save is raised again as one
    CheckpointError naming the save and the last good checkpoint (or warned about once, when
    its directory vanished), an unreadable checkpoint is named by the restore."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname and record.levelno >= logging.ERROR:
            return False
        return not any(text in record.getMessage() for text in _EXPECTED_ORBAX_WARNINGS)


class _QuietOrbaxTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for Orbax's writer tasks: each
    failed array write of a failed save, which the CheckpointError already reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("never retrieved" in record.getMessage() and "orbax" in record.getMessage())


logging.getLogger("absl").addFilter(_QuietExpectedWarnings())


logging.getLogger("asyncio").addFilter(_QuietOrbaxTasks())


def _quiet_closed_event_loops() -> None:
    """After a failed save, the writer threads of tensorstore still finishing it call into
    event loops Orbax has closed: "Exception ignored ... Event loop is closed", once per write,
    about the failure already reported. Those alone are dropped; other unraisable errors pass."""
    previous = sys.unraisablehook
    if getattr(previous, "paxtrain_quiet", False):
        return

    def hook(info: Any) -> None:
        if not (
            isinstance(info.exc_value, RuntimeError)
            and "Event loop is closed" in str(info.exc_value)
        ):
            previous(info)

    hook.paxtrain_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


_quiet_closed_event_loops()

MISMATCH_MSG = """\
Checkpoint step {step} in {directory} does not fit the state being restored: at `{path}` the \
checkpoint has {saved} and the state has {current}.
The model or optimizer was built from a different config. Restore with the run's own config \
(`paxtrain resume RUN_DIR`), or start a new run directory."""


MISSING_PATH_MSG = """\
Checkpoint step {step} in {directory} does not fit the state being restored: `{path}` is \
{where}.
The model or optimizer was built from a different config. Restore with the run's own config \
(`paxtrain resume RUN_DIR`), or start a new run directory."""


UNREADABLE_MSG = (
    "Checkpoint step {step} in {directory} is unreadable ({reason}){moved}; trying step {fallback}, "
    "which is readable: the run goes on from it."
)


MOVED_ASIDE_MSG = "; moved it aside to {path} (its files kept)"


NAMED_UNREADABLE_MSG = (
    "Checkpoint step {step} in {directory} is unreadable ({reason}); it was asked for, so no "
    "other step is used instead. Ask for another one (the run has steps {steps}), or put a good "
    "copy of step {step} back."
)


# A step directory Orbax does not list as a checkpoint (no commit marker): a damaged save.
UNFINISHED_REASON = "no complete checkpoint: an interrupted or damaged save"


UNFINISHED_MSG = (
    "Step directory {path} is no complete checkpoint (an interrupted save or a damaged one); "
    "moved it aside to {moved} so that the step can be saved again."
)


NO_CHECKPOINT_MSG = "No readable checkpoint in {directory}{detail}."


ALL_UNREADABLE_MSG = ": tried {tried}. Nothing was changed on disk. {advice}"


# What to do when no checkpoint is readable: a writer can start over, a reader cannot.
ALL_UNREADABLE_WRITER_ADVICE = (
    "If the cause is passing (a network filesystem), run the same command again; else put a "
    "good copy back, or train from step 0 with `--restart` (`Checkpointing(restart=True)`), "
    "which moves them aside as STEP.corrupt, keeping their files"
)


ALL_UNREADABLE_READER_ADVICE = "Put a good copy of one of them back"


NEWEST_UNREADABLE_MSG = (
    "The newest checkpoint of {directory} is unreadable: {unreadable}. Nothing was changed on "
    "disk. The newest readable checkpoint is step {readable}: ask for it by its number "
    "(`--step {readable}`), or put a good copy of step {newest} back."
)


ONLY_SET_ASIDE_MSG = (
    "{directory} holds no checkpoint, only damaged ones moved aside earlier ({names}): training "
    "from step 0 would start this run over. Put a good copy back as checkpoints/STEP, or start "
    "from step 0 on purpose with `--restart` (`Checkpointing(restart=True)`); the moved-aside "
    "directories stay as they are."
)


RESTARTED_MSG = (
    "No checkpoint in {directory} is readable ({tried}); --restart: moved them aside "
    "({moved}, their files kept) and training starts from step 0."
)


VANISHED_MSG = (
    "Checkpoint step {step} lost its temporary directory {path} while it was being written: most "
    "likely another Orbax CheckpointManager opened on {directory} as a writer, which deletes a "
    "live run's temporary directories (open a live run's checkpoints read-only: "
    "`paxtrain.checkpoint.open_checkpoints(RUN_DIR)`). {retry}"
)


VANISHED_RETRY = "Saving step {step} again."


VANISHED_NEXT = "Training goes on; its next save writes the state again."


VANISHED_AGAIN_MSG = (
    "the temporary directory {path} vanished again while it was being written: another writer "
    "keeps deleting it (an Orbax CheckpointManager opened on this directory without "
    "`read_only=True`)"
)


SAVE_FAILED_MSG = """\
Saving checkpoint step {step} to {directory} failed: {reason}
Training stops here; the last complete checkpoint ({last}) is intact. {advice}"""


# What to do about a failed save, by the error's errno; anything else: Orbax's reason says.
SAVE_ADVICE = {
    errno.ENOSPC: "Free disk space there, then resume.",
    errno.EDQUOT: "Free disk space there (the disk quota is full), then resume.",
    errno.EACCES: "Fix the directory's permissions, then resume.",
    errno.EPERM: "Fix the directory's permissions, then resume.",
    errno.EROFS: "Point the run directory at a writable filesystem, then resume.",
}


SAVE_ADVICE_OTHER = "Fix what the reason above names, then resume."


# How long the writes of a failed save may go on landing in its temporary directory.
PARTIAL_REMOVAL_SECONDS = 5.0


def _save_advice(error: BaseException) -> str:
    """What to do about a failed save: by the errno of the OSError behind it, if any."""
    cause = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return SAVE_ADVICE.get(getattr(cause, "errno", None), SAVE_ADVICE_OTHER)


def flatten_state(state: Any) -> dict[str, jax.Array]:
    """The arrays of a pytree keyed by their paths (`paxtrain.core.tree`'s dotted dialect),
    e.g. `model.layers.0.weight`.

    Example:
        >>> list(flatten_state({"a": [1, 2]}))
        ['a.0', 'a.1']
    """
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {path_str(path): leaf for path, leaf in leaves}


def _abstract(flat: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """What Orbax restores each array into: its shape, dtype and sharding."""
    return {
        path: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
        for path, x in flat.items()
    }


def _verify(meta: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Raises `_ChecksumMismatch` (CHECKSUM_MSG) when an array differs from what was saved."""
    # Older checkpoints recorded CRC-32s of the arrays a process held whole.
    kind, sums = ("fingerprint", array_fingerprints) if "fingerprints" in meta else (
        "CRC-32", array_checksums
    )  # fmt: skip
    expected = meta.get("fingerprints", meta.get("checksums", {}))
    for path, value in sums(arrays).items():
        if path in expected and expected[path] != value:
            raise _ChecksumMismatch(
                CHECKSUM_MSG.format(kind=kind, path=path, actual=value, expected=expected[path])
            )


def _describe(shape: tuple, dtype: Any) -> str:
    return f"shape {tuple(shape)} {np.dtype(dtype).name}"


# How Orbax and tensorstore report files of a save that are missing: deleted under the writer.
_MISSING_FILE_SIGNS = (
    "NOT_FOUND", "No such file or directory", "os_error_code='2'", "Directory not empty",
    "are missing", "No ArrayMetadata found",
)  # fmt: skip


def _held_open(paths: list[pathlib.Path]) -> list[int]:
    """Descriptors of the directories among `paths` (those still there)."""
    held = []
    for path in paths:
        try:
            if path.is_dir():
                held.append(os.open(path, os.O_RDONLY))
        except OSError:  # renamed (the save finished) or deleted meanwhile
            continue
    return held


def _listing(unreadable: list[tuple[int, str]]) -> str:
    return "; ".join(f"step {step} ({reason})" for step, reason in unreadable)


class _NoneReadable(CheckpointError):
    """No checkpoint of the directory could be read (a restart may move them aside)."""


def _reason(error: BaseException) -> str:
    """The first line of the innermost error behind `error`: Orbax wraps tensorstore's reason
    (the file and what is wrong with it) in a message that dumps the whole array spec."""
    while (error.__cause__ or error.__context__) is not None and str(
        error.__cause__ or error.__context__
    ):
        error = error.__cause__ or error.__context__
    line = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {line[:240]}"


class CheckpointManager:
    """Saves and restores `TrainState`s in one directory of step checkpoints.

    Args:
      directory: where step directories go (created if missing).
      keep_last: how many of the newest checkpoints to keep.
      keep_best: also keep this many best checkpoints by `monitor` (0: none).
      monitor: the metric that ranks checkpoints (passed to `save(..., metrics=)`).
      mode: "min" or "max" for `monitor`.
      async_save: write in the background; `wait()`, the next save and `close()` wait for it.
      read_only: a reader (`paxtrain eval`, a resume's first look): never creates, deletes or
        cleans up anything, so it cannot hurt a run saving into the directory at the same time.
      frozen_base: where the state's frozen parameters come from (a LoRA run's `init_from`);
        given, checkpoints leave them out and record this source with their fingerprints, and
        restoring one takes them from the state restored into, checked against those
        (`checkpoint.frozen_base`).

    Example:
        >>> manager = CheckpointManager(run_dir / "checkpoints", keep_last=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        keep_last: int = 3,
        keep_best: int = 0,
        monitor: str | None = None,
        mode: str = "min",
        async_save: bool = True,
        read_only: bool = False,
        frozen_base: str | None = None,
    ):
        if keep_best and not monitor:
            raise ValueError("keep_best needs `monitor`, the metric that ranks checkpoints.")
        self.directory = pathlib.Path(directory).absolute()
        self.monitor, self.frozen_base = monitor, frozen_base
        policies: list[Any] = [preservation.LatestN(n=keep_last)]
        if keep_best:
            policies.append(
                preservation.BestN(
                    get_metric_fn=lambda metrics: metrics[monitor],
                    reverse=mode == "min",  # Orbax's convention: reverse means lower is better
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn only makes Orbax record each step's metrics (for `best_step`, also without
            # keep_best); the policy below decides what is kept.
            best_fn=(lambda metrics: metrics[monitor]) if monitor else None,
            best_mode=mode,
            enable_async_checkpointing=async_save and not read_only,
            preservation_policy=preservation.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self._sign = -1.0 if mode == "max" else 1.0
        # Readers change nothing; in a multi-process job, process 0 alone renames directories.
        self._moves_bad_steps = not read_only and jax.process_index() == 0
        self._pending_step: int | None = None  # the step of a background save in flight
        # Its temporary directory and those in it, held open: a deleted one has a link count of
        # 0 (a directory made again at its path by a writer thread is another one; one a
        # writer thread kept from being removed still has its deleted subdirectories).
        self._pending_tmp: tuple[pathlib.Path, list[int]] | None = None  # path, descriptors
        self._vanished_before = False  # the last save lost its directory: no second retry
        self._tmp_gone_at_start = False

    def _move_aside(self, step_dir: pathlib.Path) -> pathlib.Path:
        """Renames a bad step directory to `STEP.corrupt` (`STEP.corrupt-2`...): kept, but no
        longer a step, so the step can be saved again."""
        target, n = step_dir.with_name(f"{step_dir.name}.corrupt"), 1
        while target.exists():
            n += 1
            target = step_dir.with_name(f"{step_dir.name}.corrupt-{n}")
        step_dir.rename(target)
        self._manager.reload()
        return target

    def _unfinished_steps(self) -> list[int]:
        """Step directories Orbax does not list as checkpoints (emptied, or left without their
        commit marker). Only a writer counts them as damaged: on an object store a reader may
        see a step directory that a live run is still writing."""
        if not (self._moves_bad_steps and self.directory.is_dir()):
            return []
        listed = set(self._manager.all_steps())
        return sorted(
            int(path.name) for path in self.directory.iterdir()
            if path.is_dir() and path.name.isdigit() and int(path.name) not in listed
        )  # fmt: skip

    def set_aside(self) -> list[str]:
        """The names of the step directories moved aside as damaged (`STEP.corrupt`...).

        Example:
            >>> manager.set_aside()  # doctest: +SKIP
            ['8.corrupt']
        """
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if ".corrupt" in p.name)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON record saved with checkpoint `step`, without reading its arrays.

        Example:
            >>> manager.meta(manager.latest_step())["config_hash"]  # doctest: +SKIP
            'a1b2c3d4e5f6'
        """
        # The item's handler alone: a record, not a checkpoint restore (fine-tuning reads it
        # beside only the arrays it asked for).
        return dict(ocp.JsonCheckpointHandler().restore(self.directory / str(step) / "meta"))

    def best_step(self) -> int | None:
        """The step whose saved `monitor` metric is best, or None if none was recorded."""
        scored = []
        for step in self.steps():
            metrics = self._manager.metrics(step) or {}
            if self.monitor in metrics:
                scored.append((self._sign * metrics[self.monitor], step))
        return min(scored)[1] if scored else None

    def save(
        self,
        state: Any,
        *,
        metrics: dict[str, float] | None = None,
        meta: dict[str, Any] | None = None,
        wait: bool = False,
    ) -> None:
        """Saves `state` at its step (`state.step`); `wait` makes it synchronous.

        A save whose temporary directory vanished while being written (another Orbax writer
        opened on the directory deletes it) is retried once, with a warning naming the cause.
        Raises CheckpointError (naming the last good checkpoint) if the write fails; the partial
        temporary directory is removed.
        """
        step = int(state.step)
        flat = flatten_state(state)
        record = {"step": step, "data_position": step, **(meta or {})}
        if self.frozen_base is not None:
            frozen = {path: flat.pop(path) for path in base.frozen_paths(state)}
            record[base.META_KEY] = base.base_record(self.frozen_base, frozen)
        record["fingerprints"] = array_fingerprints(flat)
        args = ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(record))
        self.wait()  # a background save that failed is reported as that save, not this one
        if self._moves_bad_steps and step in self._unfinished_steps():
            path = self.directory / str(step)
            moved = self._move_aside(path)
            warnings.warn(UNFINISHED_MSG.format(path=path, moved=moved.name), stacklevel=2)
        try:
            self._write(step, args, metrics, wait)
        except Exception as error:  # Orbax raises OSError, ValueError...: report them all alike
            if not self._vanished(step, error):
                raise self._save_failed(step, error) from None
            self._lost(step, VANISHED_RETRY.format(step=step))
            try:
                self._write(step, args, metrics, wait)
            except Exception as again:
                raise self._save_failed(step, again) from None

    def _write(self, step: int, args: Any, metrics: dict[str, float] | None, wait: bool) -> None:
        self._pending_step, self._tmp_gone_at_start = step, False
        self._manager.save(step, args=args, metrics=metrics, force=True)
        tmp = self._temporary(step)  # none once a synchronous save has finished
        self._pending_tmp = (tmp[0], _held_open([tmp[0], *tmp[0].rglob("*")])) if tmp else None
        # Orbax makes the directory before `save` returns: missing in a background save, it
        # was deleted before it could be held.
        self._tmp_gone_at_start = not tmp and self._manager.is_saving_in_progress()
        if wait:
            self._manager.wait_until_finished()
            self._finished()

    def _temporary(self, step: int) -> list[pathlib.Path]:
        """Orbax's temporary directory of a save in flight (`STEP.orbax-checkpoint-tmp...`)."""
        return sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))

    def _vanished(self, step: int, error: BaseException) -> bool:
        """Whether a failed save lost (part of) its directory, the first time in a row: a
        second time is reported as a failure."""
        if self._vanished_before or (self.directory / str(step)).exists():
            return False
        if self._tmp_gone_at_start:
            return True
        held = self._pending_tmp[1] if self._pending_tmp else []
        if any(os.fstat(fd).st_nlink == 0 for fd in held):
            return True
        # The directory a writer thread kept from being removed (by making a file in it
        # meanwhile), emptied: the errors name files that are missing.
        while error is not None:
            if isinstance(error, FileNotFoundError) or any(
                sign in str(error) for sign in _MISSING_FILE_SIGNS
            ):
                return True
            error = error.__cause__ or error.__context__
        return False

    def _lost(self, step: int, retry: str) -> None:
        """Warns that save `step` lost its directory and clears what is left of it."""
        _quiet_closed_event_loops()
        path = self._pending_tmp[0] if self._pending_tmp else self.directory / f"{step}.*-tmp"
        self._remove_partial(step)
        self._release_tmp()
        self._pending_step, self._vanished_before = None, True
        warnings.warn(
            VANISHED_MSG.format(step=step, path=path, directory=self.directory, retry=retry),
            stacklevel=3,
        )

    def _finished(self) -> None:
        self._release_tmp()
        self._pending_step, self._vanished_before = None, False

    def _release_tmp(self) -> None:
        if self._pending_tmp is not None:
            for fd in self._pending_tmp[1]:
                os.close(fd)
            self._pending_tmp = None

    def _remove_partial(self, step: int) -> None:
        """Deletes what a failed save left of its temporary directory (on a full disk, the
        space the next try needs); process 0 alone, like every change to the directory."""
        if not self._moves_bad_steps:
            return
        # Tensorstore's writes of the failed save may still be landing (and making their
        # directories again) for a moment after Orbax reported the failure.
        deadline = time.monotonic() + PARTIAL_REMOVAL_SECONDS
        while self._temporary(step) and time.monotonic() < deadline:
            for path in self._temporary(step):
                shutil.rmtree(path, ignore_errors=True)
            time.sleep(0.05)

    def _save_failed(self, step: int, error: Exception) -> CheckpointError:
        _quiet_closed_event_loops()
        self._remove_partial(step)
        vanished_again = self._vanished_before and self._pending_tmp is not None
        reason = str(error).splitlines()[0] if str(error) else ""
        if vanished_again:
            reason = VANISHED_AGAIN_MSG.format(path=self._pending_tmp[0])
        self._release_tmp()
        self._pending_step = None
        # Tensorstore reports an OSError as text: "... [os_error_code='28']".
        code = re.search(r"os_error_code='(\d+)'", reason)
        if len(reason) > 300:  # tensorstore's chain of contexts: the end names the cause
            reason = "..." + reason[-240:]
        if code:
            reason += f" ({os.strerror(int(code.group(1)))})"
        advice = SAVE_ADVICE.get(int(code.group(1)), SAVE_ADVICE_OTHER) if code else None
        return CheckpointError(
            SAVE_FAILED_MSG.format(
                step=step, directory=self.directory, reason=f"{type(error).__name__}: {reason}",
                last=self._last_good(step), advice=advice or _save_advice(error),
            )
        )  # fmt: skip

    def _last_good(self, failed_step: int) -> str:
        good = [s for s in self.steps() if s < failed_step]
        return f"step {good[-1]}" if good else "none yet"

    def check_compatible(self, step: int, template: Any) -> None:
        """Raises CheckpointError naming the first path whose shape or dtype differs."""
        saved = self.saved_arrays(step)
        left_out = self.meta(step).get(base.META_KEY, {}).get("fingerprints", {})
        current = {k: v for k, v in flatten_state(template).items() if k not in left_out}

        def only_in(path: str, where: str) -> CheckpointError:
            return CheckpointError(
                MISSING_PATH_MSG.format(step=step, directory=self.directory, path=path, where=where)
            )

        for path, leaf in current.items():
            if path not in saved:
                raise only_in(path, "in the state but not in the checkpoint")
            meta = saved[path]
            if tuple(meta.shape) != tuple(np.shape(leaf)) or np.dtype(meta.dtype) != np.dtype(
                leaf.dtype
            ):
                raise CheckpointError(
                    MISMATCH_MSG.format(
                        step=step, directory=self.directory, path=path,
                        saved=_describe(meta.shape, meta.dtype),
                        current=_describe(np.shape(leaf), leaf.dtype),
                    )
                )  # fmt: skip
        for path in saved:
            if path not in current:
                raise only_in(path, "in the checkpoint but not in the state")

    def saved_arrays(self, step: int) -> dict[str, Any]:
        """The path of each array checkpoint `step` holds, with its metadata (`shape`, `dtype`),
        without reading any array.

        Example:
            >>> manager.saved_arrays(5)["model.fc.weight"].shape  # doctest: +SKIP
            (3, 4)
        """
        saved = self._manager.item_metadata(step)["state"]
        return dict(getattr(saved, "tree", saved))

    def _restore_step(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
        flat = flatten_state(template)
        frozen = self.meta(step).get(base.META_KEY)
        if frozen is not None:  # the template's own frozen arrays, if they are the saved run's
            base.check_base(frozen, flat, step, self.directory)
        self.check_compatible(step, template)
        saved = {k: v for k, v in flat.items() if frozen is None or k not in frozen["fingerprints"]}
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(saved)), meta=ocp.args.JsonRestore()
            ),
        )
        meta = dict(restored.meta)
        _verify(meta, dict(restored.state))
        leaves = [restored.state[path] if path in saved else x for path, x in flat.items()]
        state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
        return state, meta

    def _read_step(self, step: int, wanted: dict[str, Any]) -> dict[str, jax.Array]:
        # Orbax's manager restores an item whole; a partial read goes to the item's directory.
        item = _abstract(wanted)
        arrays = ocp.PyTreeCheckpointer().restore(
            self.directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )
        _verify(self.meta(step), arrays)
        return arrays

    def read_arrays(
        self, wanted: dict[str, Any] | None = None, step: int | str = "latest"
    ) -> dict[str, jax.Array]:
        """Reads only the `wanted` arrays of one checkpoint (fine-tuning's road in), each into
        the shape, dtype and sharding of its `wanted` value (an array or a
        `jax.ShapeDtypeStruct`), verified against the checkpoint's fingerprints like a restore.

        Args:
          wanted: arrays keyed by their checkpoint paths (see `saved_arrays`); None: all of
            them, as saved (no model or config needed: a notebook's look at a run).
          step: "latest" or a step number; a damaged step is a CheckpointError, never a
            silent fallback to another one.

        Example:
            >>> w = manager.read_arrays({"model.fc.weight": jnp.zeros((3, 4))})  # doctest: +SKIP
        """
        step = self.latest_step() if step == "latest" else int(step)
        if step is None or step not in self.steps():
            detail = "" if step is None else f" for step {step} (have {self.steps()})"
            raise CheckpointError(NO_CHECKPOINT_MSG.format(directory=self.directory, detail=detail))
        if wanted is None:
            saved = self._named(step, lambda: self.saved_arrays(step))
            wanted = {path: jax.ShapeDtypeStruct(a.shape, a.dtype) for path, a in saved.items()}
        return self._named(step, lambda: self._read_step(step, wanted))

    def _named(self, step: int, read: Callable[[], Any]) -> Any:
        """`read()` of a step the caller asked for ("best", a number): no fallback."""
        try:
            return read()
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(
                NAMED_UNREADABLE_MSG.format(
                    step=step, directory=self.directory, reason=_reason(error),
                    steps=", ".join(map(str, self.steps())),
                )
            ) from None  # fmt: skip

    def restore(
        self, template: Any, step: int | str = "latest", *, fall_back: bool = True
    ) -> tuple[Any, dict[str, Any]]:
        """Restores into the structure of `template`; returns `(state, meta)`.

        Args:
          template: a state of the same structure (e.g. freshly built from the config); its
            arrays' shardings are used for the restored arrays.
          step: "latest", "best", or a step number.
          fall_back: for "latest": when the newest checkpoint is unreadable, restore the newest
            readable one (a writer moves the unreadable newer ones aside, one warning each).
            False: raise a CheckpointError naming them and the newest readable step instead
            (an evaluation must not silently be of another step). None readable: a
            CheckpointError listing them, and nothing changed on disk.

        Example:
            >>> state, meta = manager.restore(state, step="best")  # doctest: +SKIP
        """
        if step == "best":
            best = self.best_step()
            if best is None:
                raise CheckpointError(NO_CHECKPOINT_MSG.format(
                    directory=self.directory, detail=f" with a recorded `{self.monitor}`"
                ))  # fmt: skip
            return self._named(best, lambda: self._restore_step(best, template))
        if step != "latest":
            if int(step) not in self.steps():
                raise CheckpointError(NO_CHECKPOINT_MSG.format(
                    directory=self.directory, detail=f" for step {step} (have {self.steps()})"
                ))  # fmt: skip
            return self._named(int(step), lambda: self._restore_step(int(step), template))
        unreadable: list[tuple[int, str]] = []
        for candidate in self._candidates():
            if candidate not in self.steps():
                unreadable.append((candidate, UNFINISHED_REASON))
                continue
            try:
                restored = self._restore_step(candidate, template)
            except CheckpointError:
                raise
            except Exception as error:  # a corrupt or truncated checkpoint: try an older one
                unreadable.append((candidate, _reason(error)))
                continue
            if unreadable and not fall_back:
                raise CheckpointError(NEWEST_UNREADABLE_MSG.format(
                    directory=self.directory, unreadable=_listing(unreadable),
                    readable=candidate, newest=unreadable[0][0],
                ))  # fmt: skip
            for bad, reason in unreadable:
                self._fell_back(bad, reason, candidate)
            return restored
        raise self._none_readable(unreadable)

    def _candidates(self) -> list[int]:
        """The steps "latest" tries, newest first: the checkpoints and a writer's unfinished
        step directories (damaged saves, which it can only fall back from)."""
        return sorted({*self.steps(), *self._unfinished_steps()}, reverse=True)

    def _fell_back(self, step: int, reason: str, used: int) -> None:
        """One warning for an unreadable checkpoint passed over for step `used`; a writer moves
        it aside so that the run can save its step again."""
        moved = ""
        if self._moves_bad_steps:
            moved = MOVED_ASIDE_MSG.format(path=self._move_aside(self.directory / str(step)))
        warnings.warn(
            UNREADABLE_MSG.format(
                step=step, directory=self.directory, reason=reason, moved=moved, fallback=used
            ),
            stacklevel=3,
        )

    def _none_readable(self, unreadable: list[tuple[int, str]]) -> _NoneReadable:
        advice = (
            ALL_UNREADABLE_WRITER_ADVICE if self._moves_bad_steps else ALL_UNREADABLE_READER_ADVICE
        )
        detail = (
            ALL_UNREADABLE_MSG.format(tried=_listing(unreadable), advice=advice)
            if unreadable else ""
        )  # fmt: skip
        return _NoneReadable(NO_CHECKPOINT_MSG.format(directory=self.directory, detail=detail))

    def resume(self, template: Any, restart: bool = False) -> tuple[Any, dict[str, Any]] | None:
        """What a run restores at its start: the newest readable checkpoint (falling back as
        `restore` does), or None to start from step 0.

        Without `restart`, starting from step 0 is refused (CheckpointError, nothing changed on
        disk) when no checkpoint is readable or when only damaged ones moved aside
        (`STEP.corrupt`) are left: the run trained before, and a silent start over would hide
        it. `restart` starts from step 0 then, moving the unreadable ones aside (files kept).

        Example:
            >>> restored = manager.resume(state)  # doctest: +SKIP
        """
        if not self._candidates():
            if self.set_aside() and not restart:
                names = ", ".join(self.set_aside())
                raise CheckpointError(
                    ONLY_SET_ASIDE_MSG.format(directory=self.directory, names=names)
                )
            return None
        try:
            return self.restore(template)
        except _NoneReadable:
            if not restart:
                raise
        tried = self._candidates()
        moved = []
        if self._moves_bad_steps:  # process 0 alone renames; the others start over with it
            moved = [self._move_aside(self.directory / str(step)).name for step in tried]
        warnings.warn(
            RESTARTED_MSG.format(
                directory=self.directory, tried=", ".join(f"step {s}" for s in tried),
                moved=", ".join(moved),
            ),
            stacklevel=2,
        )  # fmt: skip
        return None

    def wait(self) -> None:
        """Blocks until a background save has finished; raises CheckpointError naming that
        save if it failed. A save that lost its directory is warned about instead, once in a
        row: the run's next save writes its state again.

        Example:
            >>> manager.wait()  # doctest: +SKIP
        """
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            step = -1 if self._pending_step is None else self._pending_step
            if not self._vanished(step, error):
                raise self._save_failed(step, error) from None
            self._lost(step, VANISHED_NEXT)
            return
        self._finished()

    def poll(self) -> None:
        """Reports a background save that failed as soon as it has finished (`wait`), rather
        than at the next save, a whole interval of training later; returns at once while it
        is still writing.

        Example:
            >>> manager.poll()  # doctest: +SKIP
        """
        if self._pending_step is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def close(self) -> None:
        """Waits for pending saves (reporting a failed one, see `wait`) and releases Orbax's
        resources."""
        try:
            self.wait()
        finally:
            self._manager.close()


def open_checkpoints(run_dir: str | pathlib.Path) -> CheckpointManager:
    """The checkpoints of a run directory (`RUN_DIR/checkpoints`) opened read-only: safe
    beside the run while it trains, unlike an Orbax `CheckpointManager` opened as a writer,
    which deletes the temporary directory of the save in flight. Close it when done.

    Example:
        >>> from paxtrain.train import TrainState
        >>> writer = CheckpointManager("runs/demo/checkpoints", async_save=False)
        >>> writer.save(TrainState.create(nn.Linear(2, 1), optax.sgd(0.1)))
        >>> writer.close()
        >>> checkpoints = open_checkpoints("runs/demo")
        >>> checkpoints.steps()
        [0]
        >>> checkpoints.read_arrays()["model.weight"].shape  # every array, by its path
        (2, 1)
        >>> checkpoints.close()
    """
    return CheckpointManager(pathlib.Path(run_dir) / CHECKPOINT_DIR, read_only=True)
