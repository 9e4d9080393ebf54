"""Reading one checkpoint: its arrays checked against the state they go into, then verified.

Before reading any array, every path, shape and dtype of the checkpoint is compared with the
state restored into (a checkpoint of another config is named, path by path); after reading,
every array is checked against its recorded fingerprint. A step the caller named ("best", a
number) is read or refused: never another step instead.

    >>> state, meta = restore_step(steps, 8, template)  # doctest: +SKIP
    >>> arrays = read_named(steps, 8, lambda: read_step(steps, 8, wanted))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from paxtrain.checkpoint import frozen_base as base
from paxtrain.checkpoint.flat_state import abstract_arrays, flatten_state, verify_arrays
from paxtrain.checkpoint.step_directory import StepDirectory
from paxtrain.errors import CheckpointError

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


NAMED_UNREADABLE_MSG = (
    "Checkpoint step {step} in {directory} is unreadable ({reason}); it was asked for, so no "
    "other step is used instead. Ask for another one (the run has steps {steps}), or put a good "
    "copy of step {step} back."
)


NO_CHECKPOINT_MSG = "No readable checkpoint in {directory}{detail}."


def _describe(shape: tuple, dtype: Any) -> str:
    return f"shape {tuple(shape)} {np.dtype(dtype).name}"


def reason(error: BaseException) -> str:
    """The first line of the innermost error behind `error`: Orbax wraps tensorstore's reason
    (the file and what is wrong with it) in a message that dumps the whole array spec.

    Example:
        >>> try:
        ...     raise ValueError("long spec dump") from OSError("disk gone\\nmore")
        ... except ValueError as error:
        ...     reason(error)
        'OSError: disk gone'
    """
    while (error.__cause__ or error.__context__) is not None and str(
        error.__cause__ or error.__context__
    ):
        error = error.__cause__ or error.__context__
    line = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {line[:240]}"


def check_compatible(steps: StepDirectory, step: int, template: Any) -> None:
    """Raises CheckpointError naming the first path whose shape or dtype differs.

    Example:
        >>> check_compatible(steps, 8, template)  # doctest: +SKIP
    """
    saved = steps.saved_arrays(step)
    left_out = steps.meta(step).get(base.META_KEY, {}).get("fingerprints", {})
    current = {k: v for k, v in flatten_state(template).items() if k not in left_out}

    def only_in(path: str, where: str) -> CheckpointError:
        return CheckpointError(
            MISSING_PATH_MSG.format(step=step, directory=steps.directory, path=path, where=where)
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
                    step=step, directory=steps.directory, path=path,
                    saved=_describe(meta.shape, meta.dtype),
                    current=_describe(np.shape(leaf), leaf.dtype),
                )
            )  # fmt: skip
    for path in saved:
        if path not in current:
            raise only_in(path, "in the checkpoint but not in the state")


def restore_step(steps: StepDirectory, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """Checkpoint `step` restored into the structure of `template`: `(state, meta)`.

    Example:
        >>> state, meta = restore_step(steps, 8, template)  # doctest: +SKIP
    """
    flat = flatten_state(template)
    frozen = steps.meta(step).get(base.META_KEY)
    if frozen is not None:  # the template's own frozen arrays, if they are the saved run's
        base.check_base(frozen, flat, step, steps.directory)
    check_compatible(steps, step, template)
    saved = {k: v for k, v in flat.items() if frozen is None or k not in frozen["fingerprints"]}
    restored = steps.orbax.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_arrays(saved)), meta=ocp.args.JsonRestore()
        ),
    )
    meta = dict(restored.meta)
    verify_arrays(meta, dict(restored.state))
    leaves = [restored.state[path] if path in saved else x for path, x in flat.items()]
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
    return state, meta


def read_step(steps: StepDirectory, step: int, wanted: dict[str, Any]) -> dict[str, jax.Array]:
    """The `wanted` arrays of checkpoint `step` alone, verified (`CheckpointManager.read_arrays`).

    Example:
        >>> read_step(steps, 8, {"model.fc.weight": jnp.zeros((3, 4))})  # doctest: +SKIP
    """
    # Orbax's manager restores an item whole; a partial read goes to the item's directory.
    item = abstract_arrays(wanted)
    arrays = ocp.PyTreeCheckpointer().restore(
        steps.directory / str(step) / "state",
        args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        ),
    )
    verify_arrays(steps.meta(step), arrays)
    return arrays


def read_named(steps: StepDirectory, step: int, read: Callable[[], Any]) -> Any:
    """`read()` of a step the caller asked for ("best", a number): no fallback, an unreadable
    one is a CheckpointError naming it and the run's other steps.

    Example:
        >>> state, meta = read_named(steps, 8, lambda: restore_step(steps, 8, t))  # doctest: +SKIP
    """
    try:
        return read()
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            NAMED_UNREADABLE_MSG.format(
                step=step, directory=steps.directory, reason=reason(error),
                steps=", ".join(map(str, steps.steps())),
            )
        ) from None  # fmt: skip


def no_checkpoint(steps: StepDirectory, detail: str) -> CheckpointError:
    """The error for a step that is not there (`detail` says which).

    Example:
        >>> no_checkpoint(steps, " for step 3 (have [4, 8])")  # doctest: +SKIP
    """
    return CheckpointError(NO_CHECKPOINT_MSG.format(directory=steps.directory, detail=detail))
