"""Checkpoints without the frozen base: what a LoRA run saves.

A run that trains adapters on frozen weights loaded by `init_from` need not write those weights
again at every save: its checkpoints hold the trainable parameters, the optimizer's state and
the rest, plus a record of the base (`frozen_base` in the checkpoint's meta: the source the
weights came from and a fingerprint of each frozen array). A restore takes the frozen arrays from
the state it restores into (the run's own build, which loaded them from the source again) and
refuses, naming the first differing array, when they are not the ones the run trained on.

    >>> record = base_record("runs/base", {"model.fc.weight": jnp.arange(3.0)})
    >>> record["source"], record["fingerprints"]
    ('runs/base', {'model.fc.weight': 'fe800000'})
"""

from __future__ import annotations

from typing import Any

import jax

import paxtrain as pax
from paxtrain.checkpoint.integrity import array_fingerprints
from paxtrain.core.tree import path_str
from paxtrain.errors import CheckpointError

# The meta record's key.
META_KEY = "frozen_base"

BASE_CHANGED_MSG = """\
Checkpoint step {step} in {directory} was trained on other frozen base weights than the ones \
loaded now: `{path}` has fingerprint {current}, not the {recorded} recorded at the save (the base \
came from {source!r}). Its checkpoints hold only the trained parameters (LoRA adapters), so they \
are right only on their own base: point `init_from` at {source!r} as it was when the run started."""

BASE_MISSING_MSG = """\
Checkpoint step {step} in {directory} leaves out the frozen base array `{path}` (from \
{source!r}), but the state being restored has no such frozen parameter. Restore with the run's \
own config (`paxtrain resume RUN_DIR`), which loads the base again."""


def frozen_paths(state: pax.Module) -> list[str]:
    """The paths (`paxtrain.core.tree`'s dialect) of the frozen parameters of a module (a
    `TrainState`): the parameters that `pax.select_parameters` leaves out.

    Example:
        >>> frozen_paths(nn.lora_linear(nn.Linear(4, 3), rank=2, alpha=2.0))
        ['bias', 'weight']
    """

    def paths(tree: Any) -> set[str]:
        return {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}

    every = paths(pax.select_parameters(pax.unfreeze_parameters(state)))
    return sorted(every - paths(pax.select_parameters(state)))


def base_record(source: str, frozen: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of the frozen arrays it leaves out: their `source` and a
    fingerprint of each (`integrity.array_fingerprints`).

    Example:
        >>> sorted(base_record("hf:llama", {"model.w": jnp.zeros(2)}))
        ['fingerprints', 'source']
    """
    return {"source": source, "fingerprints": array_fingerprints(frozen)}


def check_base(record: dict[str, Any], flat: dict[str, Any], step: int, directory: Any) -> None:
    """Raises CheckpointError when the state's frozen arrays (`flat`, by path) are not the ones
    `record` describes: one missing, or one whose fingerprint differs (BASE_CHANGED_MSG).

    Example:
        >>> record = base_record("runs/base", {"model.w": jnp.zeros(2)})
        >>> check_base(record, {"model.w": jnp.ones(2)}, 4, "ckpt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        paxtrain.errors.CheckpointError: Checkpoint step 4 in ckpt was trained on other frozen base...
    """
    source, recorded = record["source"], record["fingerprints"]
    for path in recorded:
        if path not in flat:
            raise CheckpointError(
                BASE_MISSING_MSG.format(step=step, directory=directory, path=path, source=source)
            )
    current = array_fingerprints({path: flat[path] for path in recorded})
    for path, fingerprint in recorded.items():
        if current[path] != fingerprint:
            raise CheckpointError(
                BASE_CHANGED_MSG.format(
                    step=step, directory=directory, path=path, current=current[path],
                    recorded=fingerprint, source=source,
                )
            )  # fmt: skip
