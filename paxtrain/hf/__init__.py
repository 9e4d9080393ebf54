"""Hugging Face checkpoints in and out: `init_from=hf:DIR` and `paxtrain export --format hf`.

- `safetensors`: the file format and its sharded index, read by memory map, written by hand;
- `tensors`: how one parameter lies in a Hugging Face tensor (transposed, a part, stacked);
- `llama`, `gpt2`: each architecture's map of tensor names;
- `config`: `config.json` as a recipe's model settings and back, the supported architectures;
- `load`: the import (each device's shards read straight from the files);
- `export`: the model as a checkpoint directory.
"""

from paxtrain.hf.config import ARCHITECTURES, read_config
from paxtrain.hf.export import export_hf, hf_tensors
from paxtrain.hf.load import load_hf_parameters
from paxtrain.hf.safetensors import checkpoint_tensors, write_checkpoint

__all__ = [
    "ARCHITECTURES",
    "checkpoint_tensors",
    "export_hf",
    "hf_tensors",
    "load_hf_parameters",
    "read_config",
    "write_checkpoint",
]
