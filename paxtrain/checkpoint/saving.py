"""The save side of the checkpoint store: writing a step, and what happens when a write fails.

A save is asynchronous by default: Orbax writes into a temporary directory and renames it only
when complete. A save whose temporary directory vanished (another Orbax writer opened on the
directory deletes it) is retried once with a warning; any other failure removes what the save
left (on a full disk, the space the next try needs) and becomes one `CheckpointError` naming
the save, the last good checkpoint and what to do, by the error's errno.

    >>> saver = Saver(StepDirectory(path, orbax_manager, writer=True), None)  # doctest: +SKIP
    >>> saver.save(state, metrics=None, meta={}, wait=True)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil
import time
import warnings
from typing import Any

import orbax.checkpoint as ocp

from paxtrain.checkpoint import frozen_base as base
from paxtrain.checkpoint.flat_state import flatten_state
from paxtrain.checkpoint.integrity import array_fingerprints
from paxtrain.checkpoint.orbax_noise import quiet_closed_event_loops
from paxtrain.checkpoint.step_directory import StepDirectory
from paxtrain.errors import CheckpointError

UNFINISHED_MSG = (
    "Step directory {path} is no complete checkpoint (an interrupted save or a damaged one); "
    "moved it aside to {moved} so that the step can be saved again."
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


# How Orbax and tensorstore report files of a save that are missing: deleted under the writer.
_MISSING_FILE_SIGNS = (
    "NOT_FOUND", "No such file or directory", "os_error_code='2'", "Directory not empty",
    "are missing", "No ArrayMetadata found",
)  # fmt: skip


def _save_advice(error: BaseException) -> str:
    """What to do about a failed save: by the errno of the OSError behind it, if any."""
    cause = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return SAVE_ADVICE.get(getattr(cause, "errno", None), SAVE_ADVICE_OTHER)


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


class Saver:
    """Writes checkpoints into one step directory and reports the failed ones.

    Args:
      steps: the directory saved into.
      frozen_base: where the state's frozen parameters come from (see `CheckpointManager`);
        given, a checkpoint leaves them out and records this source with their fingerprints.

    Example:
        >>> Saver(steps, frozen_base=None).save(state, None, {}, wait=True)  # doctest: +SKIP
    """

    def __init__(self, steps: StepDirectory, frozen_base: str | None):
        self.steps, self.frozen_base = steps, frozen_base
        self._pending_step: int | None = None  # the step of a background save in flight
        # Its temporary directory and those in it, held open: a deleted one has a link count of
        # 0 (a directory made again at its path by a writer thread is another one; one a
        # writer thread kept from being removed still has its deleted subdirectories).
        self._pending_tmp: tuple[pathlib.Path, list[int]] | None = None  # path, descriptors
        self._vanished_before = False  # the last save lost its directory: no second retry
        self._tmp_gone_at_start = False

    def save(
        self, state: Any, metrics: dict[str, float] | None, meta: dict[str, Any] | None, wait: bool
    ) -> None:
        """`CheckpointManager.save`: saves `state` at its step, retrying a vanished save once."""
        step = int(state.step)
        flat = flatten_state(state)
        record = {"step": step, "data_position": step, **(meta or {})}
        if self.frozen_base is not None:
            frozen = {path: flat.pop(path) for path in base.frozen_paths(state)}
            record[base.META_KEY] = base.base_record(self.frozen_base, frozen)
        record["fingerprints"] = array_fingerprints(flat)
        args = ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(record))
        self.wait()  # a background save that failed is reported as that save, not this one
        if self.steps.writer and step in self.steps.unfinished_steps():
            path = self.steps.directory / str(step)
            moved = self.steps.move_aside(step)
            warnings.warn(UNFINISHED_MSG.format(path=path, moved=moved.name), stacklevel=3)
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

    def wait(self) -> None:
        """`CheckpointManager.wait`: blocks until a background save has finished."""
        try:
            self.steps.orbax.wait_until_finished()
        except Exception as error:
            step = -1 if self._pending_step is None else self._pending_step
            if not self._vanished(step, error):
                raise self._save_failed(step, error) from None
            self._lost(step, VANISHED_NEXT)
            return
        self._finished()

    def poll(self) -> None:
        """`CheckpointManager.poll`: `wait` once a background save has finished."""
        if self._pending_step is not None and not self.steps.orbax.is_saving_in_progress():
            self.wait()

    def _write(self, step: int, args: Any, metrics: dict[str, float] | None, wait: bool) -> None:
        self._pending_step, self._tmp_gone_at_start = step, False
        self.steps.orbax.save(step, args=args, metrics=metrics, force=True)
        tmp = self.steps.temporary(step)  # none once a synchronous save has finished
        self._pending_tmp = (tmp[0], _held_open([tmp[0], *tmp[0].rglob("*")])) if tmp else None
        # Orbax makes the directory before `save` returns: missing in a background save, it
        # was deleted before it could be held.
        self._tmp_gone_at_start = not tmp and self.steps.orbax.is_saving_in_progress()
        if wait:
            self.steps.orbax.wait_until_finished()
            self._finished()

    def _vanished(self, step: int, error: BaseException) -> bool:
        """Whether a failed save lost (part of) its directory, the first time in a row: a
        second time is reported as a failure."""
        if self._vanished_before or (self.steps.directory / str(step)).exists():
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
        quiet_closed_event_loops()
        directory = self.steps.directory
        path = self._pending_tmp[0] if self._pending_tmp else directory / f"{step}.*-tmp"
        self._remove_partial(step)
        self._release_tmp()
        self._pending_step, self._vanished_before = None, True
        warnings.warn(
            VANISHED_MSG.format(step=step, path=path, directory=directory, retry=retry),
            stacklevel=4,
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
        if not self.steps.writer:
            return
        # Tensorstore's writes of the failed save may still be landing (and making their
        # directories again) for a moment after Orbax reported the failure.
        deadline = time.monotonic() + PARTIAL_REMOVAL_SECONDS
        while self.steps.temporary(step) and time.monotonic() < deadline:
            for path in self.steps.temporary(step):
                shutil.rmtree(path, ignore_errors=True)
            time.sleep(0.05)

    def _save_failed(self, step: int, error: Exception) -> CheckpointError:
        quiet_closed_event_loops()
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
                step=step, directory=self.steps.directory,
                reason=f"{type(error).__name__}: {reason}",
                last=self._last_good(step), advice=advice or _save_advice(error),
            )
        )  # fmt: skip

    def _last_good(self, failed_step: int) -> str:
        good = [s for s in self.steps.steps() if s < failed_step]
        return f"step {good[-1]}" if good else "none yet"
