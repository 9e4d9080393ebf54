"""How one of paxtrain's parameters lies in a Hugging Face tensor, both ways.

Three layouts cover the Llama and GPT-2 families:
- the same array (embeddings, norms, GPT-2's Conv1D weights, which are [in, out] like `Linear`);
- transposed: PyTorch's `nn.Linear` keeps [out, in], paxtrain's `Linear` [in, out];
- one of `parts` equal blocks of the tensor's last axis: GPT-2's fused `c_attn` holds the query,
  key and value projections side by side.

A model built with `scan_layers` stacks its blocks' parameters on a leading axis: `Stacked` reads
one Hugging Face tensor per layer into it.

    >>> spec = HfTensor("model.layers.0.mlp.down_proj.weight", transposed=True)
    >>> spec.hf_shape((64, 32))  # ours [in, out] -> theirs [out, in]
    (32, 64)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

Index = tuple[slice, ...]


@dataclasses.dataclass(frozen=True)
class HfTensor:
    """One parameter as (part of) the Hugging Face tensor `name`.

    Args:
      name: the tensor's name in the safetensors files.
      transposed: the tensor is the parameter's transpose (2-d).
      part, parts: the parameter is block `part` of `parts` equal blocks of the tensor's last
        axis.

    Example:
        >>> qkv = np.arange(12.0).reshape(2, 6)  # GPT-2's c_attn: [in, 3 * out]
        >>> HfTensor("c_attn", part=1, parts=3).read(qkv, (slice(0, 2), slice(0, 2))).tolist()
        [[2.0, 3.0], [8.0, 9.0]]
    """

    name: str
    transposed: bool = False
    part: int = 0
    parts: int = 1

    def hf_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape the Hugging Face tensor has for a parameter of `shape`."""
        shape = tuple(shape[::-1]) if self.transposed else tuple(shape)
        return (*shape[:-1], shape[-1] * self.parts)

    def read(self, tensor: np.ndarray, index: Index) -> np.ndarray:
        """The block `index` (slices in the parameter's shape) of the parameter, copied out of
        `tensor` (a memory map: only those bytes are read)."""
        index = tuple(index)
        if self.parts > 1:
            width = tensor.shape[-1] // self.parts
            last = slice(*index[-1].indices(width)[:2])
            index = (
                *index[:-1],
                slice(last.start + self.part * width, last.stop + self.part * width),
            )
        if self.transposed:
            return np.array(tensor[index[::-1]].T)
        return np.array(tensor[index])

    def write(self, value: np.ndarray) -> np.ndarray:
        """The parameter's `value` laid out as (its part of) the Hugging Face tensor."""
        return np.ascontiguousarray(value.T if self.transposed else value)

    def for_layer(self, layer: int) -> HfTensor:
        """This spec with `{layer}` in its name filled in."""
        return dataclasses.replace(self, name=self.name.format(layer=layer))


@dataclasses.dataclass(frozen=True)
class Stacked:
    """A parameter stacked over layers (`nn.ScanLayers`): layer i is `layers[i]`.

    Example:
        >>> layers = (HfTensor("h.0.w"), HfTensor("h.1.w"))
        >>> Stacked(layers).hf_shape((2, 4, 8))
        (4, 8)
    """

    layers: tuple[HfTensor, ...]

    def hf_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return self.layers[0].hf_shape(shape[1:])


def read_block(spec: HfTensor | Stacked, tensors: Sequence[np.ndarray], index: Index) -> np.ndarray:
    """The block `index` of the parameter `spec` describes, from its Hugging Face `tensors`
    (one, or one per layer for `Stacked`).

    Example:
        >>> spec = Stacked((HfTensor("a", transposed=True), HfTensor("b", transposed=True)))
        >>> a, b = np.ones((3, 2)), np.zeros((3, 2))
        >>> read_block(spec, [a, b], (slice(0, 2), slice(0, 2), slice(1, 3))).shape
        (2, 2, 2)
    """
    if isinstance(spec, HfTensor):
        return spec.read(tensors[0], index)
    layers = range(len(spec.layers))[index[0]]
    return np.stack([spec.layers[i].read(tensors[i], index[1:]) for i in layers])


def hf_blocks(spec: HfTensor | Stacked, value: np.ndarray) -> list[tuple[HfTensor, np.ndarray]]:
    """The Hugging Face tensors (or their parts) a parameter's `value` becomes, each laid out.

    Example:
        >>> spec = Stacked((HfTensor("h.0.w", transposed=True), HfTensor("h.1.w", transposed=True)))
        >>> [(t.name, a.shape) for t, a in hf_blocks(spec, np.zeros((2, 4, 8)))]
        [('h.0.w', (8, 4)), ('h.1.w', (8, 4))]
    """
    if isinstance(spec, HfTensor):
        return [(spec, spec.write(value))]
    return [(layer, layer.write(v)) for layer, v in zip(spec.layers, value, strict=True)]


LAYER_PATH = re.compile(r"blocks\.layers\.(\d+)\.(.+)")
STACKED_PATH = re.compile(r"blocks\.block\.(.+)")


@dataclasses.dataclass(frozen=True)
class NameMap:
    """The Hugging Face tensor of each parameter path of a recipe's model.

    Args:
      model: path -> spec of the parameters outside the blocks.
      layer: path inside block i (`blocks.layers.{i}.<path>`, or `blocks.block.<path>` stacked)
        -> spec whose name holds `{layer}`.
      ignored: regular expressions of tensors that hold no parameter (buffers such as rotary
        frequencies or attention masks that old checkpoints saved).
      optional_prefix: a prefix of the names that some checkpoints leave out (GPT-2's
        `transformer.`).

    Example:
        >>> names = NameMap({"head.weight": HfTensor("lm_head.weight", transposed=True)},
        ...                 {"norm.scale": HfTensor("layers.{layer}.norm.weight")})
        >>> names.spec("blocks.layers.3.norm.scale", (8,))
        HfTensor(name='layers.3.norm.weight', transposed=False, part=0, parts=1)
    """

    model: Mapping[str, HfTensor]
    layer: Mapping[str, HfTensor]
    ignored: tuple[str, ...] = ()
    optional_prefix: str = ""

    def spec(self, path: str, shape: Sequence[int]) -> HfTensor | Stacked | None:
        """The spec of the parameter at `path` of `shape`, or None if the map has none."""
        if path in self.model:
            return self.model[path]
        if match := LAYER_PATH.fullmatch(path):
            layer = self.layer.get(match.group(2))
            return None if layer is None else layer.for_layer(int(match.group(1)))
        if match := STACKED_PATH.fullmatch(path):
            layer = self.layer.get(match.group(1))
            if layer is None:
                return None
            return Stacked(tuple(layer.for_layer(i) for i in range(shape[0])))
        return None

    def is_ignored(self, name: str) -> bool:
        """Whether the tensor `name` holds no parameter (a buffer some checkpoints save)."""
        return any(re.fullmatch(pattern, name) for pattern in self.ignored)
