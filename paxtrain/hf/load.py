"""`init_from=hf:DIR`: a recipe's model with its parameters read from a Hugging Face checkpoint.

Each parameter is made with `jax.make_array_from_callback` in the sharding the model gives it
(with `mesh.fsdp=8`, each device's slice): the callback copies only that slice out of a memory
map of the safetensors file, transposing or splitting on the way (`paxtrain.hf.tensors`), so no
device and no host buffer ever holds more than the shards being made.

Orbax 0.12.8's safetensors layout (`orbax.checkpoint.experimental.v1.load_pytree` under a
`Context` with `checkpoint_layout="safetensors"`, experimental) also reads into target
shardings, but in the file's layout: PyTorch's [out, in] projections would then be transposed
on the devices, each device holding a second copy of a matrix's shards meanwhile, and GPT-2's
fused q/k/v split there too. Reading the slices ourselves makes each shard once, as it is kept.

    >>> model = load_hf_parameters(model, "tests/fixtures/hf/llama")  # doctest: +SKIP
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any, TypeVar

import jax

import paxtrain as pax
from paxtrain.checkpoint.store import flatten_state
from paxtrain.core.tree import path_search
from paxtrain.errors import CheckpointError
from paxtrain.hf.config import Architecture, read_config
from paxtrain.hf.safetensors import TensorEntry, checkpoint_tensors, open_tensor
from paxtrain.hf.tensors import HfTensor, NameMap, Stacked, read_block

M = TypeVar("M", bound=pax.Module)

OTHER_ARCHITECTURE_MSG = """\
hf:{directory} holds a {architecture}, which the {recipe} recipe's model builds, but the model \
is a {model}: fine-tune it with that recipe (`paxtrain fit {recipe} init_from=hf:{directory}`)."""

SETTING_MSG = """\
hf:{directory}: the model has {key}={model_value} but the checkpoint's config.json gives \
{checkpoint_value}: build the model from that config.json (`paxtrain fit` with \
`init_from=hf:DIR` does), or with {key}={checkpoint_value}."""

MISSING_TENSOR_MSG = """\
hf:{directory} has no tensor `{tensor}`, which the model's `{path}` {shape} needs (the file's \
tensors look like `{example}`): the checkpoint is incomplete or of another model."""

SHAPE_MSG = """\
hf:{directory}: tensor `{tensor}` has shape {hf_shape}, but the model's `{path}` {shape} needs \
{expected}: the checkpoint does not match its config.json (or the model its settings)."""

UNUSED_MSG = """\
hf:{directory} holds tensors the {architecture} has no place for, e.g. `{tensor}` {shape} \
({count} in all): its config.json describes another model than its weights (attention biases? \
more layers?). Use a checkpoint whose config.json matches its weights."""


def _entry(names: NameMap, tensors: dict[str, TensorEntry], name: str) -> TensorEntry | None:
    if name in tensors:
        return tensors[name]
    prefix = names.optional_prefix
    return tensors.get(name[len(prefix) :]) if prefix and name.startswith(prefix) else None


def _check_settings(architecture: Architecture, settings: dict, model: Any, directory: str) -> None:
    """Head counts and the other settings no tensor shape shows (4 heads of 8 and 2 of 16 have
    the same projections) must be the checkpoint's."""
    ours = architecture.settings(architecture.config(model))
    for key, value in settings.items():
        if ours.get(key) != value:
            raise CheckpointError(
                SETTING_MSG.format(
                    directory=directory, key=key, model_value=ours.get(key), checkpoint_value=value
                )
            )


def hf_specs(
    model: Any, directory: str | pathlib.Path, include: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, HfTensor | Stacked], dict[str, list[TensorEntry]]]:
    """The model's parameters (by path), the spec and tensor entries of each one the
    architecture has a tensor for, after checking every name and shape against the checkpoint
    (a CheckpointError names the first mismatch: the tensor and both shapes). Parameters of
    layers the architecture has not (LoRA adapters) get no spec: they keep their values.

    Example:
        >>> params, specs, entries = hf_specs(model, "tests/fixtures/hf/gpt2")  # doctest: +SKIP
    """
    directory = str(directory)
    architecture, settings = read_config(directory)
    target = f"{type(model).__module__}.{type(model).__qualname__}"
    if target != architecture.recipe:
        raise CheckpointError(
            OTHER_ARCHITECTURE_MSG.format(
                directory=directory, architecture=architecture.name, model=target,
                recipe=architecture.recipe.split(".")[2],
            )
        )  # fmt: skip
    _check_settings(architecture, settings, model, directory)
    tensors = checkpoint_tensors(directory)
    params = flatten_state(pax.select_parameters(pax.unfreeze_parameters(model)))
    params = {
        p: x for p, x in params.items() if not include or any(path_search(r, p) for r in include)
    }
    specs, entries, used = {}, {}, set()
    for path, param in params.items():
        spec = architecture.names.spec(path, param.shape)
        if spec is None:  # a layer the architecture has not (a LoRA adapter): kept as it is
            continue
        specs[path], entries[path] = spec, []
        expected = spec.hf_shape(param.shape)
        for tensor in spec.layers if isinstance(spec, Stacked) else (spec,):
            entry = _entry(architecture.names, tensors, tensor.name)
            if entry is None:
                raise CheckpointError(
                    MISSING_TENSOR_MSG.format(
                        directory=directory, tensor=tensor.name, path=path,
                        shape=tuple(param.shape), example=next(iter(tensors), "?"),
                    )
                )  # fmt: skip
            if entry.shape != expected:
                raise CheckpointError(
                    SHAPE_MSG.format(
                        directory=directory, tensor=tensor.name, hf_shape=entry.shape, path=path,
                        shape=tuple(param.shape), expected=expected,
                    )
                )  # fmt: skip
            entries[path].append(entry)
            used.add(id(entry))
    unused = [
        name
        for name, entry in tensors.items()
        if id(entry) not in used and not architecture.names.is_ignored(name)
    ]
    if unused and not include:
        raise CheckpointError(
            UNUSED_MSG.format(
                directory=directory, architecture=architecture.name, tensor=unused[0],
                shape=tensors[unused[0]].shape, count=len(unused),
            )
        )  # fmt: skip
    return params, specs, entries


def _sharding(param: Any) -> jax.sharding.Sharding:
    sharding = getattr(param, "sharding", None)
    return sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def load_hf_parameters(model: M, directory: str | pathlib.Path, include: Sequence[str] = ()) -> M:
    """`model` with its parameters (frozen ones too) read from a Hugging Face checkpoint
    directory (`config.json`, `model.safetensors` or shards with their index), each straight
    into the sharding of the parameter it replaces.

    `model` may hold `jax.ShapeDtypeStruct` leaves with shardings (what `Trainer.prepare` passes
    to `init_from` for a sharded build). Its settings must be the checkpoint's (`read_config`
    gives them); any mismatch of a setting, a name or a shape is a CheckpointError naming it.
    Parameters of layers the architecture has not, such as LoRA adapters (`nn.apply_lora` keeps
    the base weights at their paths), keep their values; every tensor of the checkpoint must
    find its parameter.

    Args:
      model: a `LlamaLM` or `TransformerLM` (tied) with the checkpoint's settings.
      directory: the checkpoint directory.
      include: regular expressions on parameter paths: only those that match one are read.

    Example:
        >>> from paxtrain.recipes.llama_lm import LlamaLM
        >>> _, settings = read_config("tests/fixtures/hf/llama")  # doctest: +SKIP
        >>> model = load_hf_parameters(LlamaLM(**settings), "tests/fixtures/hf/llama")  # doctest: +SKIP
    """
    from paxtrain.checkpoint.finetune import replace_parameters

    params, specs, entries = hf_specs(model, directory, include)
    loaded = {}
    for path, spec in specs.items():
        param = params[path]
        tensors = [open_tensor(entry) for entry in entries[path]]

        def read(index: tuple[slice, ...], spec=spec, tensors=tensors, dtype=param.dtype):
            return read_block(spec, tensors, index).astype(dtype, copy=False)

        loaded[path] = jax.make_array_from_callback(param.shape, _sharding(param), read)
    return replace_parameters(model, loaded)
