"""A directory of step checkpoints as it stands on disk: the complete ones Orbax lists, a
writer's unfinished step directories (damaged saves), the ones moved aside as damaged
(`STEP.corrupt`, never deleted), and the temporary directory of a save in flight.

Only a writer (process 0 of a run that saves) changes anything here: a reader
(`read_only`) may be looking at a directory a live run is writing.

    >>> steps = StepDirectory(directory, orbax_manager, writer=True)  # doctest: +SKIP
    >>> steps.steps(), steps.set_aside()  # doctest: +SKIP
    ([4, 8], ['12.corrupt'])
"""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class StepDirectory:
    """The step directories of one checkpoint directory, and moving a bad one aside.

    Args:
      directory: the checkpoint directory (`RUN_DIR/checkpoints`).
      orbax_manager: Orbax's manager of that directory (it lists the complete checkpoints).
      writer: whether this process may change the directory (move bad steps aside, clean up).

    Example:
        >>> StepDirectory(path, orbax_manager, writer=False).steps()  # doctest: +SKIP
        [4, 8]
    """

    def __init__(self, directory: pathlib.Path, orbax_manager: ocp.CheckpointManager, writer: bool):
        self.directory, self.orbax, self.writer = directory, orbax_manager, writer

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self.orbax.all_steps())

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON record saved with checkpoint `step`, without reading its arrays."""
        # The item's handler alone: a record, not a checkpoint restore (fine-tuning reads it
        # beside only the arrays it asked for).
        return dict(ocp.JsonCheckpointHandler().restore(self.directory / str(step) / "meta"))

    def saved_arrays(self, step: int) -> dict[str, Any]:
        """The path of each array checkpoint `step` holds, with its metadata (`shape`, `dtype`),
        without reading any array."""
        saved = self.orbax.item_metadata(step)["state"]
        return dict(getattr(saved, "tree", saved))

    def unfinished_steps(self) -> list[int]:
        """Step directories Orbax does not list as checkpoints (emptied, or left without their
        commit marker). Only a writer counts them as damaged: on an object store a reader may
        see a step directory that a live run is still writing."""
        if not (self.writer and self.directory.is_dir()):
            return []
        listed = set(self.orbax.all_steps())
        return sorted(
            int(path.name) for path in self.directory.iterdir()
            if path.is_dir() and path.name.isdigit() and int(path.name) not in listed
        )  # fmt: skip

    def candidates(self) -> list[int]:
        """The steps a restore of "latest" tries, newest first: the checkpoints and a writer's
        unfinished step directories (damaged saves, which it can only fall back from)."""
        return sorted({*self.steps(), *self.unfinished_steps()}, reverse=True)

    def move_aside(self, step: int) -> pathlib.Path:
        """Renames a bad step directory to `STEP.corrupt` (`STEP.corrupt-2`...): kept, but no
        longer a step, so the step can be saved again."""
        step_dir = self.directory / str(step)
        target, n = step_dir.with_name(f"{step_dir.name}.corrupt"), 1
        while target.exists():
            n += 1
            target = step_dir.with_name(f"{step_dir.name}.corrupt-{n}")
        step_dir.rename(target)
        self.orbax.reload()
        return target

    def set_aside(self) -> list[str]:
        """The names of the step directories moved aside as damaged (`STEP.corrupt`...)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if ".corrupt" in p.name)

    def temporary(self, step: int) -> list[pathlib.Path]:
        """Orbax's temporary directory of a save in flight (`STEP.orbax-checkpoint-tmp...`)."""
        return sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
