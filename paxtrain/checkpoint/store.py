"""Checkpoints of a `TrainState` on Orbax's `CheckpointManager`.

One checkpoint is a step directory with two items: `state`, every array of the state keyed by
its path (`model.layers.0.weight`), and `meta`, a JSON record (step, data position, config
hash, versions). Saving is asynchronous by default: training goes on while Orbax writes to a
temporary directory, which it renames only when complete, so a process killed mid-save leaves
the previous checkpoints intact. Restoring checks every path, shape and dtype against the state
it restores into before reading anything, and falls back to an older checkpoint when the newest
one cannot be read. Each checkpoint records a fingerprint of every array (Orbax keeps no checksum
of array data), computed on the devices and verified on restore, so a flipped byte is caught
instead of resumed from, on one process or several. A writer
moves a corrupt or unfinished step directory aside (`STEP.corrupt`, never deleted) so the run can
save that step again; a reader (`read_only`) changes nothing.

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


# Orbax warnings about what this module does on purpose: saving at a step without evaluation
# (kept by `keep_last` only) and opening a directory read-only (a reader).
_EXPECTED_ORBAX_WARNINGS = ("did not provide metrics", "read_only=True", "directory is read only")


class _QuietExpectedWarnings(logging.Filter):
    """Drops those warnings, and the tracebacks of Orbax's errors: a failed save is raised
    again as one CheckpointError naming the save and the last good checkpoint."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return not any(text in record.getMessage() for text in _EXPECTED_ORBAX_WARNINGS)


class _QuietOrbaxTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for Orbax's writer tasks: each
    failed array write of a failed save, which the CheckpointError already reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("never retrieved" in record.getMessage() and "orbax" in record.getMessage())


logging.getLogger("absl").addFilter(_QuietExpectedWarnings())


logging.getLogger("asyncio").addFilter(_QuietOrbaxTasks())


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
    "Checkpoint step {step} in {directory} is unreadable ({reason}){moved}; trying step {fallback}."
)


MOVED_ASIDE_MSG = "; moved it aside to {path}"


UNFINISHED_MSG = (
    "Step directory {path} is no complete checkpoint (an interrupted save or a damaged one); "
    "moved it aside to {moved} so that the step can be saved again."
)


NO_CHECKPOINT_MSG = "No readable checkpoint in {directory}{detail}."


ALL_UNREADABLE_MSG = (
    ": tried {tried}. The damaged ones are kept, moved aside as STEP.corrupt; restore a good "
    "copy into the directory, or run again to start from step 0"
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


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


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
        if self._moves_bad_steps:
            self._move_aside_unfinished()

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

    def _move_aside_unfinished(self) -> None:
        """Moves aside step directories Orbax does not list as checkpoints (emptied, or left
        without their commit marker): saving their step again would fail."""
        listed = set(self._manager.all_steps())
        for path in sorted(self.directory.iterdir()) if self.directory.is_dir() else []:
            if path.is_dir() and path.name.isdigit() and int(path.name) not in listed:
                moved = self._move_aside(path)
                warnings.warn(UNFINISHED_MSG.format(path=path, moved=moved.name), stacklevel=3)

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

        Raises CheckpointError (naming the last good checkpoint) if the write fails.
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
        try:
            self._pending_step = step
            self._manager.save(step, args=args, metrics=metrics, force=True)
            if wait:
                self.wait()
        except CheckpointError:
            raise
        except Exception as error:  # Orbax raises OSError, ValueError...: report them all alike
            raise self._save_failed(step, error) from None
        if wait:
            self._pending_step = None

    def _save_failed(self, step: int, error: Exception) -> CheckpointError:
        self._pending_step = None
        reason = str(error).splitlines()[0] if str(error) else ""
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
        self, wanted: dict[str, Any], step: int | str = "latest"
    ) -> dict[str, jax.Array]:
        """Reads only the `wanted` arrays of one checkpoint (fine-tuning's road in), each into
        the shape, dtype and sharding of its `wanted` value (an array or a
        `jax.ShapeDtypeStruct`), verified against the checkpoint's fingerprints like a restore.

        Args:
          wanted: arrays keyed by their checkpoint paths (see `saved_arrays`).
          step: "latest" or a step number; a damaged step is a CheckpointError, never a
            silent fallback to another one.

        Example:
            >>> w = manager.read_arrays({"model.fc.weight": jnp.zeros((3, 4))})  # doctest: +SKIP
        """
        step = self.latest_step() if step == "latest" else int(step)
        if step is None or step not in self.steps():
            detail = "" if step is None else f" for step {step} (have {self.steps()})"
            raise CheckpointError(NO_CHECKPOINT_MSG.format(directory=self.directory, detail=detail))
        return self._named(step, lambda: self._read_step(step, wanted))

    def _named(self, step: int, read: Callable[[], Any]) -> Any:
        """`read()` of a step the caller asked for ("best", a number): no fallback."""
        try:
            return read()
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(
                UNREADABLE_MSG.format(
                    step=step, directory=self.directory, reason=_reason(error), moved="",
                    fallback="none (this step was asked for)",
                )
            ) from None  # fmt: skip

    def restore(self, template: Any, step: int | str = "latest") -> tuple[Any, dict[str, Any]]:
        """Restores into the structure of `template`; returns `(state, meta)`.

        Args:
          template: a state of the same structure (e.g. freshly built from the config); its
            arrays' shardings are used for the restored arrays.
          step: "latest" (falling back to older checkpoints when the newest is unreadable),
            "best", or a step number.

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
        candidates = self.steps()[::-1]
        tried = []
        for i, candidate in enumerate(candidates):
            try:
                return self._restore_step(candidate, template)
            except CheckpointError:
                raise
            except Exception as error:  # a corrupt or truncated checkpoint: try an older one
                moved = ""
                if self._moves_bad_steps:
                    path = self._move_aside(self.directory / str(candidate))
                    moved = MOVED_ASIDE_MSG.format(path=path)
                tried.append(f"step {candidate} ({_reason(error)})")
                fallback = candidates[i + 1] if i + 1 < len(candidates) else "none"
                warnings.warn(
                    UNREADABLE_MSG.format(
                        step=candidate, directory=self.directory, reason=_reason(error),
                        moved=moved, fallback=fallback,
                    ),
                    stacklevel=2,
                )  # fmt: skip
        detail = ALL_UNREADABLE_MSG.format(tried="; ".join(tried)) if tried else ""
        raise CheckpointError(NO_CHECKPOINT_MSG.format(directory=self.directory, detail=detail))

    def wait(self) -> None:
        """Blocks until a background save has finished; raises CheckpointError naming that
        save if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._save_failed(self._pending_step or -1, error) from None
        self._pending_step = None

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources."""
        self._manager.close()
