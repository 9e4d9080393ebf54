"""Fine-tuning: load parameters from another run's checkpoint (or a Hugging Face checkpoint
directory, `hf:DIR`), freeze parts by path.

    >>> model = load_parameters(model, "runs/pretrain", include=[r"encoder\\."])  # doctest: +SKIP
    >>> model = freeze_by_path(model, [r"^encoder"])                            # doctest: +SKIP

Paths are written in `paxtrain.core.tree`'s dotted dialect, as checkpoints key their arrays
(`encoder.layers.0.weight`); patterns are regular expressions searched in them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax

import paxtrain as pax
from paxtrain.checkpoint.frozen_base import META_KEY
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.core.module import MODULE, child_fields, rebuild
from paxtrain.core.tree import path_search, path_str
from paxtrain.errors import CheckpointError

M = TypeVar("M", bound=pax.Module)


# `init_from=hf:DIR`: a Hugging Face checkpoint directory (`paxtrain.hf`).
HF_PREFIX = "hf:"

NO_SOURCE_MSG = """\
init_from={source!r} is not a run directory, a checkpoints directory or a step checkpoint.
Point it at `runs/NAME`, `runs/NAME/checkpoints` or `runs/NAME/checkpoints/STEP`, or at a Hugging
Face checkpoint directory with `hf:DIR`."""


NOTHING_LOADED_MSG = """\
init_from={source!r} loaded no parameter: none of the model's parameter paths{filtered} is in \
the checkpoint. Model paths look like {example}; the checkpoint's look like {saved}."""


SHAPE_MSG = """\
init_from={source!r}: `{path}` has shape {saved} in the checkpoint and {current} in the model. \
Leave it out with `init_from_include` patterns that do not match it."""


ADAPTERS_ONLY_MSG = """\
init_from={source!r} is a LoRA run: its checkpoints hold the adapters but not the frozen base \
weights they were trained on (those came from {base!r}). Fine-tune from the merged model \
instead: `paxtrain export RUN --format hf --merge --out DIR`, then `init_from=hf:DIR`."""


NO_MATCH_MSG = "freeze pattern {pattern!r} matches no submodule path; paths are {paths}."


def _checkpoint(source: pathlib.Path) -> tuple[pathlib.Path, int | str]:
    """The checkpoints directory and the step `source` designates: a step directory, or the
    newest step of a checkpoints directory or of a run directory's."""
    if source.name.isdigit() and (source / "state").is_dir():
        return source.parent, int(source.name)
    for root in (source / "checkpoints", source):
        if any(p.name.isdigit() for p in root.glob("*")):
            return root, "latest"
    raise CheckpointError(NO_SOURCE_MSG.format(source=str(source)))


def load_parameters(model: M, source: str | pathlib.Path, include: Sequence[str] = ()) -> M:
    """`model` with its parameters (frozen ones too) taken from a checkpoint's model.

    Only those parameters are read from the checkpoint, not the optimizer's moments nor the
    rest of it, each straight into the layout of the parameter it replaces: its `sharding`,
    which `model` may give as `jax.ShapeDtypeStruct` leaves (what `Trainer.prepare` passes to
    `init_from` for a sharded build, see `parallel.laid_out`). They are read through the
    checkpoint store (`CheckpointManager.read_arrays`), so a damaged checkpoint is refused with
    the same integrity message as a resume's.

    `source` may also be `hf:DIR`, a Hugging Face checkpoint directory: then
    `paxtrain.hf.load_hf_parameters` reads it, with the same contract.

    Args:
      model: the model to initialize; its structure decides what is looked up.
      source: a run directory, its `checkpoints` directory, one step checkpoint, or `hf:DIR`.
      include: regular expressions on the parameters' paths (`encoder.layers.0.weight`, see
        `paxtrain.core.tree`); only those matching one are loaded (all if empty). Parameters
        not loaded keep their fresh initialization.

    Example:
        >>> model = load_parameters(model, "runs/pretrain")  # doctest: +SKIP
    """
    if str(source).startswith(HF_PREFIX):
        from paxtrain.hf.load import load_hf_parameters

        return load_hf_parameters(model, str(source)[len(HF_PREFIX) :], include)
    directory, step = _checkpoint(pathlib.Path(source))
    manager = CheckpointManager(directory, read_only=True)
    try:
        step = manager.latest_step() if step == "latest" else step
        if step is None or step not in manager.steps():
            raise CheckpointError(NO_SOURCE_MSG.format(source=str(source)))
        saved = manager.saved_arrays(step)
        adapters_only = manager.meta(step).get(META_KEY)
        if adapters_only is not None:
            raise CheckpointError(
                ADAPTERS_ONLY_MSG.format(source=str(source), base=adapters_only["source"])
            )
        # Freezing changes no leaf, so the unfrozen model's parameters are the model's, in order.
        thawed = pax.unfreeze_parameters(model)
        params = flatten_state(pax.select_parameters(thawed))
        found = _loadable(params, saved, str(source), include)
        wanted = {
            f"model.{path}": jax.ShapeDtypeStruct(
                params[path].shape,
                saved[f"model.{path}"].dtype,
                sharding=getattr(params[path], "sharding", None),
            )
            for path in found
        }
        restored = manager.read_arrays(wanted, step)
    finally:
        manager.close()
    loaded = {path: restored[f"model.{path}"].astype(params[path].dtype) for path in found}
    return replace_parameters(model, loaded)


def replace_parameters(model: M, loaded: Mapping[str, jax.Array]) -> M:
    """`model` with the parameters at the paths of `loaded` (frozen ones too) replaced; the
    others, and what is frozen, kept.

    Example:
        >>> layer = replace_parameters(nn.Linear(2, 3), {"bias": jnp.ones(3)})
        >>> layer.bias.tolist()
        [1.0, 1.0, 1.0]
    """
    # Freezing changes no leaf, so the unfrozen model's parameters are the model's, in order.
    thawed = pax.unfreeze_parameters(model)
    params = flatten_state(pax.select_parameters(thawed))
    leaves, treedef = jax.tree_util.tree_flatten(pax.select_parameters(thawed))
    new_leaves = [loaded.get(path, leaf) for path, leaf in zip(params, leaves)]
    thawed = pax.update_parameters(thawed, jax.tree_util.tree_unflatten(treedef, new_leaves))
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(model), jax.tree_util.tree_leaves(thawed)
    )


def _loadable(
    params: dict[str, Any], saved: dict[str, Any], source: str, include: Sequence[str]
) -> list[str]:
    """The parameter paths to load: those `include` selects that the checkpoint's model has,
    each of the model's shape; a CheckpointError when a shape differs or nothing is found."""
    wanted = [p for p in params if not include or any(path_search(rx, p) for rx in include)]
    found = [path for path in wanted if f"model.{path}" in saved]
    for path in found:
        shape, current = tuple(saved[f"model.{path}"].shape), tuple(params[path].shape)
        if shape != current:
            raise CheckpointError(
                SHAPE_MSG.format(source=source, path=path, saved=shape, current=current)
            )
    if not found:
        raise CheckpointError(
            NOTHING_LOADED_MSG.format(
                source=source,
                filtered=" matching `init_from_include`" if include else "",
                example=next(iter(params), "?"),
                saved=next((k for k in saved if k.startswith("model.")), "?"),
            )
        )
    return found


def _submodule_paths(module: pax.Module, prefix: str = "") -> list[str]:
    paths = []
    for name, kind, child in child_fields(module):
        if kind != MODULE:
            continue
        for key_path, sub in jax.tree_util.tree_flatten_with_path(child, is_leaf=_is_module)[0]:
            if isinstance(sub, pax.Module):
                path = path_str(key_path, prefix=prefix + name)
                paths.append(path)
                paths.extend(_submodule_paths(sub, path + "."))
    return paths


def _is_module(x: Any) -> bool:
    return isinstance(x, pax.Module)


def freeze_by_path(model: M, patterns: Sequence[str]) -> M:
    """`model` with the submodules whose path matches a pattern frozen (their children too).

    Example:
        >>> model = freeze_by_path(model, [r"^embed$", r"^layers\\.[01]$"])  # doctest: +SKIP
    """
    all_paths = _submodule_paths(model)
    for pattern in patterns:
        if not any(path_search(pattern, p) for p in all_paths):
            raise ValueError(NO_MATCH_MSG.format(pattern=pattern, paths=all_paths))

    def visit(module: pax.Module, path: str) -> pax.Module:
        if path and any(path_search(rx, path) for rx in patterns):
            return pax.freeze_parameters(module)
        fields = {}
        for name, kind, child in child_fields(module):
            if kind == MODULE:
                fields[name] = jax.tree_util.tree_map_with_path(
                    lambda key_path, sub, name=name: (
                        visit(sub, path_str(key_path, prefix=f"{path}.{name}" if path else name))
                        if isinstance(sub, pax.Module)
                        else sub
                    ),
                    child,
                    is_leaf=_is_module,
                )
        return rebuild(module, fields)

    return visit(model, "")
