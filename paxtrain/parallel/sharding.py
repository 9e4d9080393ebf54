"""How the `TrainState` is laid out on a mesh: replicated, fully sharded, tensor parallel.

The layout follows the mesh's axis sizes, one rule per leaf of the state:

1. tensor parallelism: the first `(regex, PartitionSpec)` rule whose regex is found in the leaf's
   path (`paxtrain.core.tree`'s dotted dialect, as checkpoints key it, e.g.
   `model.blocks.layers.0.attention.query_proj.weight`; JAX's `layers[0]` still matches too)
   gives its spec over the "tensor" axis;
2. FSDP: when the mesh's "fsdp" axis is larger than 1, a leaf of at least `fsdp_min_size`
   elements is also split over "fsdp" along its largest axis that divides evenly and that no
   rule took;
3. everything else is replicated.

So a mesh with `fsdp=1, tensor=1` is plain data parallelism. A leaf's spec depends only on the end
of its path and on its shape, and the optimizer's moments and the EMA repeat the parameters'
paths below their own prefix (`optimizer.opt_state.0.mu.blocks...query_proj.weight`) with the
same shapes: they are sharded exactly like the parameters they mirror.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from paxtrain.core.tree import KeyPath, path_search, path_str
from paxtrain.errors import LayoutError
from paxtrain.parallel.mesh import FSDP, TENSOR

Rule = tuple[str, PartitionSpec]

# 64 KiB of float32: smaller leaves cost more in gather latency than they save in memory.
DEFAULT_FSDP_MIN_SIZE = 2**14

RULE_RANK_MSG = """\
The tensor-parallel rule {pattern!r} gives {spec} ({rank} axes) to {path} of shape {shape} \
({ndim} axes). Make the rule's regex match only leaves of that rank, e.g. end it with `\\.weight$`."""

RULE_DIVISIBLE_MSG = """\
The tensor-parallel rule {pattern!r} splits axis {axis} of {path} (shape {shape}) over mesh axis \
{names!r} of size {size}, which does not divide {dim}. Use a tensor size that divides {dim}, \
change the layer's size, or pass `tensor_rules=` without this rule."""

RULE_FORMAT_MSG = """\
Tensor-parallel rule {index} is {rule!r}; a rule is a pair (regex, spec): a regex found in the \
paths of the parameters it applies to, and one entry per axis of them, each null, a mesh axis name \
or a list of names. In a config: `'parallel.tensor_rules=[["fc\\.weight$", [null, tensor]]]'`."""

RULE_REGEX_MSG = "Tensor-parallel rule {index}: {pattern!r} is not a valid regex ({reason})."

UNUSED_TENSOR_AXIS_MSG = """\
The mesh's "tensor" axis has size {size}, but no tensor-parallel rule matches a parameter of this \
model, so the {size} devices along it would all compute the same thing. Write rules for the \
model's layers: a regex on the parameter paths (such as `{path}`) and the axes to split, e.g. \
`'parallel.tensor_rules=[["{example}", [null, tensor]]]'` in a config (`tensor_rules=` for \
`Trainer` and `parallel.setup`), or use mesh.tensor=1."""

RULE_AXIS_MSG = """\
The tensor-parallel rule {pattern!r} names mesh axes {unknown} that the mesh lacks; its axes are \
{axes}. Use "tensor" (or "fsdp", "data") in the rule's PartitionSpec."""


def column_parallel(module: str) -> tuple[Rule, Rule]:
    """Rules for a `Linear` (weight [in, out]) whose outputs are split over "tensor".

    Each device computes a slice of the output features, from the whole input: no communication
    until a `row_parallel` layer consumes them.

    Args:
      module: a regex for the layer's path, e.g. `r"mlp\\.layers\\.0"`.

    Example:
        >>> weight_rule, bias_rule = column_parallel("query_proj")
        >>> weight_rule[1], bias_rule[1]
        (P(None, 'tensor'), P('tensor',))
    """
    weight = (rf"{module}\.weight$", PartitionSpec(None, TENSOR))
    bias = (rf"{module}\.bias$", PartitionSpec(TENSOR))
    return weight, bias


def row_parallel(module: str) -> tuple[Rule, Rule]:
    """Rules for a `Linear` whose inputs are split over "tensor" (the weight's rows).

    Each device multiplies its slice of the features; the partial outputs are summed (one
    all-reduce), and the bias, added once after the sum, is replicated.

    Args:
      module: a regex for the layer's path, e.g. `r"output_proj"`.

    Example:
        >>> weight_rule, bias_rule = row_parallel("output_proj")
        >>> weight_rule[1], bias_rule[1]
        (P('tensor', None), P())
    """
    weight = (rf"{module}\.weight$", PartitionSpec(TENSOR, None))
    bias = (rf"{module}\.bias$", PartitionSpec())
    return weight, bias


def column_parallel_adapter(module: str) -> tuple[Rule, Rule]:
    """Rules for the LoRA adapter (`nn.LoRALinear`) of a `column_parallel` layer: `lora_b`
    [out, rank] split over "tensor" by its outputs, as the layer's weight, `lora_a` replicated.

    Each device then adds its slice of the adapter's update to its slice of the outputs, from
    the whole input: no more communication than the layer's own.

    Example:
        >>> a_rule, b_rule = column_parallel_adapter("query_proj")
        >>> a_rule[1], b_rule[1]
        (P(), P('tensor', None))
    """
    a = (rf"{module}\.adapter\.lora_a$", PartitionSpec())
    b = (rf"{module}\.adapter\.lora_b$", PartitionSpec(TENSOR, None))
    return a, b


def row_parallel_adapter(module: str) -> tuple[Rule, Rule]:
    """Rules for the LoRA adapter of a `row_parallel` layer: `lora_a` [rank, in] split over
    "tensor" by its inputs, as the layer's weight, `lora_b` replicated.

    Each device projects its slice of the features to a partial [rank] vector; those are summed
    (an all-reduce of `rank` numbers a position), then `lora_b` maps them to the outputs.

    Example:
        >>> a_rule, b_rule = row_parallel_adapter("output_proj")
        >>> a_rule[1], b_rule[1]
        (P(None, 'tensor'), P())
    """
    a = (rf"{module}\.adapter\.lora_a$", PartitionSpec(None, TENSOR))
    b = (rf"{module}\.adapter\.lora_b$", PartitionSpec())
    return a, b


def _column(module: str) -> tuple[Rule, ...]:
    return (*column_parallel(module), *column_parallel_adapter(module))


def _row(module: str) -> tuple[Rule, ...]:
    return (*row_parallel(module), *row_parallel_adapter(module))


# Megatron-LM's layout: attention heads split over "tensor" (the query, key and value projections
# column parallel, the output projection row parallel), and likewise the first and the later
# layers of a transformer block's `mlp` Sequential (as in paxtrain/recipes/transformer_lm.py). Each
# attention or MLP block then needs one all-reduce forward and one backward. A layer's LoRA
# adapter (paxtrain/nn/lora.py) is split along with it.
DEFAULT_TENSOR_RULES: tuple[Rule, ...] = (
    *_column(r"(query_proj|key_proj|value_proj)"),
    *_row(r"output_proj"),
    *_column(r"mlp\.layers\.0"),
    *_row(r"mlp\.layers\.\d+"),
    # A SwiGLU's (paxtrain/nn/swiglu.py) gate and up projections, then its down projection.
    *_column(r"(gate_proj|up_proj)"),
    *_row(r"down_proj"),
)


def as_rules(rules: Sequence[Any]) -> tuple[Rule, ...]:
    """Tensor-parallel rules as `(regex, PartitionSpec)` pairs, from pairs whose spec may be a
    list, as a config writes it (`parallel.tensor_rules=[["fc\\.weight$", [null, tensor]]]`).

    Example:
        >>> as_rules([["fc", [None, "tensor"]]])
        (('fc', P(None, 'tensor')),)
    """
    out = []
    for index, rule in enumerate(rules):
        if isinstance(rule, str) or len(rule) != 2 or not isinstance(rule[0], str):
            raise LayoutError(RULE_FORMAT_MSG.format(index=index, rule=rule))
        pattern, spec = rule
        try:
            re.compile(pattern)
        except re.error as error:
            raise LayoutError(
                RULE_REGEX_MSG.format(index=index, pattern=pattern, reason=error)
            ) from None
        entries = list(spec) if isinstance(spec, (list, tuple, PartitionSpec)) else None
        valid = entries is not None and all(
            entry is None
            or isinstance(entry, str)
            or (isinstance(entry, (list, tuple)) and all(isinstance(n, str) for n in entry))
            for entry in entries
        )
        if not valid:
            raise LayoutError(RULE_FORMAT_MSG.format(index=index, rule=rule))
        spec = PartitionSpec(*(e if e is None or isinstance(e, str) else tuple(e) for e in entries))
        out.append((pattern, spec))
    return tuple(out)


def check_tensor_axis_used(shardings: Any, mesh: Mesh) -> None:
    """Raises a `LayoutError` when the mesh's "tensor" axis is larger than 1 but no leaf is
    split over it: its devices would only repeat each other's work.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> check_tensor_axis_used(state_shardings({"w": np.zeros((4, 4))}, make_mesh()), make_mesh())
    """
    size = mesh.shape.get(TENSOR, 1)
    if size == 1:
        return
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    for _, sharding in flat:
        if any(TENSOR in (e if isinstance(e, tuple) else (e,)) for e in sharding.spec):
            return
    paths = [path_str(p) for p, s in flat if len(s.spec) == 2]
    path = next((p for p in paths if p.startswith("model.")), paths[0] if paths else "fc.weight")
    example = re.escape(".".join(path.split(".")[-2:])) + "$"
    raise LayoutError(UNUSED_TENSOR_AXIS_MSG.format(size=size, path=path, example=example))


def _tensor_spec(
    path: str | KeyPath, shape: tuple[int, ...], mesh: Mesh | AbstractMesh, rules: Sequence[Rule]
) -> list:
    """The first matching rule's spec, one entry per axis of the leaf. Entries over mesh axes of
    size 1 become None, which leaves those axes free for FSDP."""
    shown = path if isinstance(path, str) else path_str(path)  # messages name the dotted path
    for pattern, spec in rules:
        if not path_search(pattern, path):
            continue
        if len(spec) > len(shape):
            raise LayoutError(
                RULE_RANK_MSG.format(
                    pattern=pattern, spec=spec, rank=len(spec), path=shown, shape=shape,
                    ndim=len(shape),
                )
            )  # fmt: skip
        entries = []
        for axis, (entry, dim) in enumerate(zip(spec, shape)):
            names = (entry,) if isinstance(entry, str) else tuple(entry or ())
            unknown = [name for name in names if name not in mesh.shape]
            if unknown:
                raise LayoutError(
                    RULE_AXIS_MSG.format(pattern=pattern, unknown=unknown, axes=tuple(mesh.shape))
                )
            size = math.prod(mesh.shape[name] for name in names)
            if dim % size:
                raise LayoutError(
                    RULE_DIVISIBLE_MSG.format(
                        pattern=pattern, axis=axis, path=shown, shape=shape, names=entry,
                        size=size, dim=dim,
                    )
                )  # fmt: skip
            entries.append(entry if size > 1 else None)
        return [*entries, *[None] * (len(shape) - len(spec))]
    return [None] * len(shape)


def partition_spec(
    path: str | KeyPath,
    shape: tuple[int, ...],
    mesh: Mesh | AbstractMesh,
    tensor_rules: Sequence[Rule] = DEFAULT_TENSOR_RULES,
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE,
) -> PartitionSpec:
    """The spec of one leaf of the state: its tensor rule, then FSDP (see the module docstring).

    Args:
      path: the leaf's dotted path (`model.fc.weight`, see `paxtrain.core.tree`), or its JAX
        key path.
      shape: the leaf's shape.
      mesh: a mesh from `make_mesh` (or an `AbstractMesh` of the same axes: only the sizes
        matter).
      tensor_rules: `(regex, PartitionSpec)` pairs; the first whose regex is found in `path`
        applies.
      fsdp_min_size: leaves with fewer elements stay replicated over "fsdp".

    Returns:
      A `PartitionSpec` with one entry per axis of the leaf.

    Example:
        >>> mesh = jax.sharding.AbstractMesh((1, 4, 1), ("data", "fsdp", "tensor"))
        >>> partition_spec("model.fc.weight", (1024, 4096), mesh)
        P(None, 'fsdp')
    """
    spec = _tensor_spec(path, shape, mesh, tensor_rules)
    fsdp = mesh.shape.get(FSDP, 1)
    if fsdp > 1 and int(np.prod(shape)) >= fsdp_min_size:
        free = [a for a, dim in enumerate(shape) if spec[a] is None and dim % fsdp == 0]
        if free:
            # The largest axis leaves the largest slices: fewer, bigger transfers to gather.
            spec[max(free, key=lambda a: shape[a])] = FSDP
    return PartitionSpec(*spec)


def state_shardings(
    state: Any,
    mesh: Mesh,
    tensor_rules: Sequence[Rule] = DEFAULT_TENSOR_RULES,
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE,
) -> Any:
    """A `NamedSharding` for every leaf of `state` (a `TrainState` or any pytree of arrays).

    Args:
      state: the tree to lay out; with the extras of its step options already added
        (`train_step.init(state)`), so that they are laid out too.
      mesh: a mesh from `make_mesh`.
      tensor_rules: see `partition_spec`; `()` turns tensor parallelism off.
      fsdp_min_size: see `partition_spec`.

    Returns:
      A tree of `NamedSharding`s with the structure of `state`, for `jax.device_put` and the
      `in_shardings` / `out_shardings` of the step.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> shardings = state_shardings({"w": np.zeros((1024, 64))}, make_mesh())
        >>> shardings["w"].spec
        P(None, None)
        >>> state = jax.device_put(state, state_shardings(state, mesh))  # doctest: +SKIP
    """

    def sharding(path, leaf):
        spec = partition_spec(path, np.shape(leaf), mesh, tensor_rules, fsdp_min_size)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, state)
