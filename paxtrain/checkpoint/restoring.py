"""What "latest" means when checkpoints are damaged: the restore and resume policy.

A restore of "latest" tries the steps newest first and goes on from the newest readable one;
a writer moves each unreadable newer step aside (`STEP.corrupt`, its files kept) so that the run
can save that step again, with one warning each. When none is readable, nothing on disk
changes and the error lists them all; a run's start (`resume`) then refuses to start over from
step 0 unless asked to (`restart`), and so it does when only moved-aside steps are left.

    >>> import warnings
    >>> from paxtrain.train import TrainState
    >>> state = TrainState.create(nn.Linear(2, 1), optax.sgd(0.1))
    >>> manager = CheckpointManager("demo/checkpoints", async_save=False)
    >>> for step in (1, 2):
    ...     manager.save(state.replace(step=jnp.asarray(step)))
    >>> _ = (manager.directory / "2" / "state").rename(manager.directory / "2" / "damaged")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     restored, meta = manager.restore(state)  # "latest": step 2 is unreadable
    >>> int(restored.step), manager.steps(), manager.set_aside()
    (1, [1], ['2.corrupt'])
    >>> "unreadable" in str(caught[0].message) and "trying step 1" in str(caught[0].message)
    True
    >>> manager.close()
"""

from __future__ import annotations

import warnings
from typing import Any

from paxtrain.checkpoint.reading import NO_CHECKPOINT_MSG, reason, restore_step
from paxtrain.checkpoint.step_directory import StepDirectory
from paxtrain.errors import CheckpointError

UNREADABLE_MSG = (
    "Checkpoint step {step} in {directory} is unreadable ({reason}){moved}; trying step {fallback}, "
    "which is readable: the run goes on from it."
)


MOVED_ASIDE_MSG = "; moved it aside to {path} (its files kept)"


# A step directory Orbax does not list as a checkpoint (no commit marker): a damaged save.
UNFINISHED_REASON = "no complete checkpoint: an interrupted or damaged save"


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


class _NoneReadable(CheckpointError):
    """No checkpoint of the directory could be read (a restart may move them aside)."""


def _listing(unreadable: list[tuple[int, str]]) -> str:
    return "; ".join(f"step {step} ({why})" for step, why in unreadable)


def restore_latest(
    steps: StepDirectory, template: Any, fall_back: bool
) -> tuple[Any, dict[str, Any]]:
    """The newest readable checkpoint restored into `template` (`CheckpointManager.restore`'s
    "latest": see its `fall_back`).

    Example:
        >>> state, meta = restore_latest(steps, template, fall_back=True)  # doctest: +SKIP
    """
    unreadable: list[tuple[int, str]] = []
    for candidate in steps.candidates():
        if candidate not in steps.steps():
            unreadable.append((candidate, UNFINISHED_REASON))
            continue
        try:
            restored = restore_step(steps, candidate, template)
        except CheckpointError:
            raise
        except Exception as error:  # a corrupt or truncated checkpoint: try an older one
            unreadable.append((candidate, reason(error)))
            continue
        if unreadable and not fall_back:
            raise CheckpointError(NEWEST_UNREADABLE_MSG.format(
                directory=steps.directory, unreadable=_listing(unreadable),
                readable=candidate, newest=unreadable[0][0],
            ))  # fmt: skip
        for bad, why in unreadable:
            _fell_back(steps, bad, why, candidate)
        return restored
    raise _none_readable(steps, unreadable)


def _fell_back(steps: StepDirectory, step: int, why: str, used: int) -> None:
    """One warning for an unreadable checkpoint passed over for step `used`; a writer moves
    it aside so that the run can save its step again."""
    moved = ""
    if steps.writer:
        moved = MOVED_ASIDE_MSG.format(path=steps.move_aside(step))
    warnings.warn(
        UNREADABLE_MSG.format(
            step=step, directory=steps.directory, reason=why, moved=moved, fallback=used
        ),
        stacklevel=4,
    )


def _none_readable(steps: StepDirectory, unreadable: list[tuple[int, str]]) -> _NoneReadable:
    advice = ALL_UNREADABLE_WRITER_ADVICE if steps.writer else ALL_UNREADABLE_READER_ADVICE
    detail = (
        ALL_UNREADABLE_MSG.format(tried=_listing(unreadable), advice=advice)
        if unreadable else ""
    )  # fmt: skip
    return _NoneReadable(NO_CHECKPOINT_MSG.format(directory=steps.directory, detail=detail))


def resume(steps: StepDirectory, template: Any, restart: bool) -> tuple[Any, dict[str, Any]] | None:
    """What a run restores at its start (`CheckpointManager.resume`): the newest readable
    checkpoint, or None to start from step 0.

    Example:
        >>> restored = resume(steps, template, restart=False)  # doctest: +SKIP
    """
    if not steps.candidates():
        if steps.set_aside() and not restart:
            names = ", ".join(steps.set_aside())
            raise CheckpointError(ONLY_SET_ASIDE_MSG.format(directory=steps.directory, names=names))
        return None
    try:
        return restore_latest(steps, template, fall_back=True)
    except _NoneReadable:
        if not restart:
            raise
    tried = steps.candidates()
    moved = []
    if steps.writer:  # process 0 alone renames; the others start over with it
        moved = [steps.move_aside(step).name for step in tried]
    warnings.warn(
        RESTARTED_MSG.format(
            directory=steps.directory, tried=", ".join(f"step {s}" for s in tried),
            moved=", ".join(moved),
        ),
        stacklevel=3,
    )  # fmt: skip
    return None
