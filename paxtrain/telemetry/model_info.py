"""`ModelInfo`: what a run's model is, in the numbers telemetry reports: its parameter count,
its model FLOPs per step and their source, and the dtype it computes in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from paxtrain.telemetry.flops import abstract_batch, model_flops
from paxtrain.telemetry.parameters import count_parameters


class ModelInfo(NamedTuple):
    """A model's numbers (see `model_info`)."""

    parameters: int
    trainable: int  # fewer than `parameters` when some are frozen (fine-tuning, LoRA)
    flops_per_step: float
    flops_source: str  # "formula": the model's own; "jaxpr": its matmuls counted
    compute_dtype: str


def model_info(
    model: Any, loss_fn: Callable, batch: Any, tokens_per_batch: int, policy: Any
) -> ModelInfo:
    """The `ModelInfo` of training `model` with `loss_fn` on batches like `batch` (one step's,
    of `tokens_per_batch` tokens) under the mixed-precision `policy` (None: float32).

    Example:
        >>> def loss_fn(model, x):
        ...     return (model(x) ** 2).sum(), None
        >>> model_info(nn.Linear(3, 2), loss_fn, np.ones((4, 3), np.float32), 0, None)
        ModelInfo(parameters=8, trainable=8, flops_per_step=96.0, flops_source='jaxpr', compute_dtype='float32')
    """
    abstract = abstract_batch(batch)
    flops, source = model_flops(loss_fn, model, abstract, tokens_per_batch)
    dtype = "float32" if policy is None else np.dtype(policy.compute_dtype).name
    trainable = count_parameters(model, trainable_only=True)
    return ModelInfo(count_parameters(model), trainable, flops, source, dtype)
