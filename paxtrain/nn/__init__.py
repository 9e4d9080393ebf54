"""Layers for paxtrain: each one a `pax.Module` with sizes in its repr.

    >>> import jax.numpy as jnp, paxtrain as pax, paxtrain.nn as nn
    >>> model = nn.Linear(2, 8) >> nn.LayerNorm(8) >> nn.Dropout(0.1) >> nn.Linear(8, 1)
    >>> model, y = pax.purecall(model, jnp.ones((4, 2)))  # Dropout advances its key
    >>> y.shape
    (4, 1)

Layers that update states in training mode (`BatchNorm`, `Dropout`, `EMA`) are called through
`pax.purecall` / `pax.module_and_value`; everything else can also be called directly.
"""

from paxtrain.core.rng import RngSeq
from paxtrain.nn import initializers
from paxtrain.nn.attention import MultiHeadAttention, causal_mask
from paxtrain.nn.batch_norm import BatchNorm, BatchNorm1D, BatchNorm2D
from paxtrain.nn.conv import Conv1D, Conv1DTranspose, Conv2D, Conv2DTranspose
from paxtrain.nn.dropout import Dropout
from paxtrain.nn.ema import EMA
from paxtrain.nn.embed import Embed
from paxtrain.nn.group_norm import GroupNorm
from paxtrain.nn.grouped_query_attention import GroupedQueryAttention
from paxtrain.nn.kv_cache import KVCache
from paxtrain.nn.layer_norm import LayerNorm, RMSNorm
from paxtrain.nn.linear import Linear
from paxtrain.nn.lora import LoRAAdapter, LoRALinear, apply_lora, lora_linear, merge_lora
from paxtrain.nn.normalization import normalize
from paxtrain.nn.pool import avg_pool, max_pool
from paxtrain.nn.recurrent import (
    GRU,
    LSTM,
    GRUState,
    LSTMState,
    VanillaRNN,
    VanillaRNNState,
    unroll,
)
from paxtrain.nn.rotary import Llama3RopeScaling, apply_rope, rope_angles, rope_scaling
from paxtrain.nn.scan_layers import ScanLayers, call_block
from paxtrain.nn.sequential import Chainable, Identity, Lambda, Sequential
from paxtrain.nn.swiglu import SwiGLU

__all__ = [
    "EMA",
    "GRU",
    "LSTM",
    "BatchNorm",
    "BatchNorm1D",
    "BatchNorm2D",
    "Chainable",
    "Conv1D",
    "Conv1DTranspose",
    "Conv2D",
    "Conv2DTranspose",
    "Dropout",
    "Embed",
    "GRUState",
    "GroupNorm",
    "GroupedQueryAttention",
    "Identity",
    "KVCache",
    "LSTMState",
    "Lambda",
    "LayerNorm",
    "Linear",
    "LoRAAdapter",
    "LoRALinear",
    "MultiHeadAttention",
    "RMSNorm",
    "RngSeq",
    "ScanLayers",
    "Sequential",
    "SwiGLU",
    "VanillaRNN",
    "VanillaRNNState",
    "apply_lora",
    "apply_rope",
    "Llama3RopeScaling",
    "avg_pool",
    "call_block",
    "causal_mask",
    "initializers",
    "lora_linear",
    "max_pool",
    "merge_lora",
    "normalize",
    "rope_angles",
    "rope_scaling",
    "unroll",
]
