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

`CheckpointManager` is the one public class; it composes one module an idea: `step_directory`
(what is on disk), `saving` (the save side and its failures), `reading` (one step, checked and
verified), `restoring` (what "latest" and a run's start do about damaged steps), `flat_state`
(arrays by path) and `orbax_noise` (Orbax's log lines about what this does on purpose).

Example:
    >>> manager = CheckpointManager("runs/demo/checkpoints", keep_last=2)  # doctest: +SKIP
    >>> manager.save(state, meta={"config_hash": "..."})  # doctest: +SKIP
    >>> state, meta = manager.restore(state)  # doctest: +SKIP
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from paxtrain.checkpoint import reading, restoring
from paxtrain.checkpoint.flat_state import flatten_state
from paxtrain.checkpoint.saving import SAVE_ADVICE, SAVE_ADVICE_OTHER, Saver
from paxtrain.checkpoint.step_directory import StepDirectory

__all__ = [
    "CHECKPOINT_DIR",
    "SAVE_ADVICE",
    "SAVE_ADVICE_OTHER",
    "CheckpointManager",
    "flatten_state",
    "open_checkpoints",
]


CHECKPOINT_DIR = "checkpoints"  # a run directory's checkpoints: RUN_DIR/checkpoints


def _orbax_options(
    keep_last: int, keep_best: int, monitor: str | None, mode: str, async_save: bool,
    read_only: bool,
) -> ocp.CheckpointManagerOptions:  # fmt: skip
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
    return ocp.CheckpointManagerOptions(
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


class CheckpointManager:
    """Saves and restores `TrainState`s in one directory of step checkpoints.

    It composes the pieces of `paxtrain.checkpoint`: the step directory on disk
    (`step_directory`), the save side (`saving`), reading one step (`reading`) and the policy
    for "latest" when checkpoints are damaged (`restoring`).

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
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=_orbax_options(keep_last, keep_best, monitor, mode, async_save, read_only),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self._sign = -1.0 if mode == "max" else 1.0
        # Readers change nothing; in a multi-process job, process 0 alone renames directories.
        writer = not read_only and jax.process_index() == 0
        self._steps = StepDirectory(self.directory, self._manager, writer)
        self._saver = Saver(self._steps, frozen_base)

    def set_aside(self) -> list[str]:
        """The names of the step directories moved aside as damaged (`STEP.corrupt`...).

        Example:
            >>> manager.set_aside()  # doctest: +SKIP
            ['8.corrupt']
        """
        return self._steps.set_aside()

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return self._steps.steps()

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON record saved with checkpoint `step`, without reading its arrays.

        Example:
            >>> manager.meta(manager.latest_step())["config_hash"]  # doctest: +SKIP
            'a1b2c3d4e5f6'
        """
        return self._steps.meta(step)

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
        self._saver.save(state, metrics, meta, wait)

    def check_compatible(self, step: int, template: Any) -> None:
        """Raises CheckpointError naming the first path whose shape or dtype differs."""
        reading.check_compatible(self._steps, step, template)

    def saved_arrays(self, step: int) -> dict[str, Any]:
        """The path of each array checkpoint `step` holds, with its metadata (`shape`, `dtype`),
        without reading any array.

        Example:
            >>> manager.saved_arrays(5)["model.fc.weight"].shape  # doctest: +SKIP
            (3, 4)
        """
        return self._steps.saved_arrays(step)

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
            raise reading.no_checkpoint(self._steps, detail)
        if wanted is None:
            saved = reading.read_named(self._steps, step, lambda: self.saved_arrays(step))
            wanted = {path: jax.ShapeDtypeStruct(a.shape, a.dtype) for path, a in saved.items()}
        return reading.read_named(
            self._steps, step, lambda: reading.read_step(self._steps, step, wanted)
        )

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
        if step == "latest":
            return restoring.restore_latest(self._steps, template, fall_back)
        if step == "best":
            named = self.best_step()
            if named is None:
                raise reading.no_checkpoint(self._steps, f" with a recorded `{self.monitor}`")
        else:
            named = int(step)
            if named not in self.steps():
                raise reading.no_checkpoint(self._steps, f" for step {step} (have {self.steps()})")
        return reading.read_named(
            self._steps, named, lambda: reading.restore_step(self._steps, named, template)
        )

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
        return restoring.resume(self._steps, template, restart)

    def wait(self) -> None:
        """Blocks until a background save has finished; raises CheckpointError naming that
        save if it failed. A save that lost its directory is warned about instead, once in a
        row: the run's next save writes its state again.

        Example:
            >>> manager.wait()  # doctest: +SKIP
        """
        self._saver.wait()

    def poll(self) -> None:
        """Reports a background save that failed as soon as it has finished (`wait`), rather
        than at the next save, a whole interval of training later; returns at once while it
        is still writing.

        Example:
            >>> manager.poll()  # doctest: +SKIP
        """
        self._saver.poll()

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
