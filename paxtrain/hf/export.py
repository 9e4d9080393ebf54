"""A recipe's model as a Hugging Face checkpoint directory: `config.json`, the safetensors
weights (sharded with an index above a size) and, when given, `tokenizer.json`.

The tensors are the inverse of the import's layouts (`paxtrain.hf.tensors`), so importing the
directory again gives the model's parameters bit for bit.

    >>> import tempfile
    >>> from paxtrain.recipes.llama_lm import LlamaLM
    >>> model = LlamaLM(vocab_size=64, num_heads=4, num_kv_heads=2, model_dim=16)
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> export_hf(model, out, {"max_position_embeddings": 128})
    ['config.json', 'model.safetensors']
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

import paxtrain as pax
from paxtrain.checkpoint.store import flatten_state
from paxtrain.errors import CheckpointError
from paxtrain.hf.config import CONFIG_FILE, architecture_of
from paxtrain.hf.safetensors import write_checkpoint
from paxtrain.hf.tensors import hf_blocks

TOKENIZER_FILE = "tokenizer.json"

NO_TENSOR_MSG = """\
The model's parameter `{path}` has no place in a {architecture} checkpoint (a LoRA adapter? \
then add `--merge`, which folds the adapters into the weights they adapt)."""


def hf_tensors(model: Any) -> dict[str, np.ndarray]:
    """The Hugging Face tensors of a recipe's model, by name, on the host.

    Example:
        >>> from paxtrain.recipes.transformer_lm import TransformerLM
        >>> model = TransformerLM(64, seq_len=8, num_heads=2, model_dim=8, tie_embeddings=True)
        >>> hf_tensors(model)["transformer.h.0.attn.c_attn.weight"].shape  # q, k, v side by side
        (8, 24)
    """
    architecture = architecture_of(model)
    params = flatten_state(pax.select_parameters(pax.unfreeze_parameters(model)))
    blocks: dict[str, list[np.ndarray | None]] = {}
    for path, param in params.items():
        spec = architecture.names.spec(path, param.shape)
        if spec is None:
            raise CheckpointError(NO_TENSOR_MSG.format(path=path, architecture=architecture.name))
        for tensor, value in hf_blocks(spec, np.asarray(jax.device_get(param))):
            parts = blocks.setdefault(tensor.name, [None] * tensor.parts)
            parts[tensor.part] = value
    return {name: np.concatenate(parts, axis=-1) for name, parts in blocks.items()}


def export_hf(
    model: Any,
    out: pathlib.Path,
    extra_config: Mapping[str, Any] | None = None,
    max_shard_bytes: int | None = None,
    tokenizer: pathlib.Path | None = None,
) -> list[str]:
    """Writes `model` into the directory `out` as a Hugging Face checkpoint; returns the names of
    the files written.

    Args:
      model: a `LlamaLM` or a `TransformerLM` built with `tie_embeddings` (GPT-2).
      out: the directory (made if missing; files of the same names are replaced).
      extra_config: more `config.json` entries the model does not know (its
        `max_position_embeddings`, token ids of the tokenizer).
      max_shard_bytes: the most bytes of one safetensors file; None: one file.
      tokenizer: a `tokenizer.json` to copy beside the weights.

    Example:
        >>> export_hf(model, pathlib.Path("hf_out"), max_shard_bytes=2**30)  # doctest: +SKIP
        ['config.json', 'model.safetensors']
    """
    config = {**architecture_of(model).config(model), **(extra_config or {})}
    tensors = hf_tensors(model)
    dtypes = {str(array.dtype) for array in tensors.values()}
    config["torch_dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    written = [CONFIG_FILE, *write_checkpoint(out, tensors, max_shard_bytes)]
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
        written.append(TOKENIZER_FILE)
    return written
