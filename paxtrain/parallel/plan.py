"""`setup`: the parallel strategy of a training run, picked by name from `STRATEGIES`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jax.sharding import Mesh

from paxtrain.errors import LayoutError
from paxtrain.parallel.jit_strategy import JitStrategy
from paxtrain.parallel.mesh import make_mesh
from paxtrain.parallel.pmap_strategy import PmapStrategy
from paxtrain.parallel.sharding import DEFAULT_FSDP_MIN_SIZE, DEFAULT_TENSOR_RULES, Rule
from paxtrain.parallel.strategy import ParallelStrategy

# Every strategy by name: a new one is a `ParallelStrategy` in its own file and an entry here.
STRATEGIES: dict[str, type[ParallelStrategy]] = {
    strategy.name: strategy for strategy in (JitStrategy, PmapStrategy)
}

UNKNOWN_STRATEGY_MSG = "Unknown parallel strategy {strategy!r}; choose {choices}."


def setup(
    state: Any,
    strategy: str = "jit",
    mesh: Mesh | None = None,
    *,
    batch_axis: int = 0,
    tensor_rules: Sequence[Rule] = DEFAULT_TENSOR_RULES,
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE,
) -> ParallelStrategy:
    """The parallel strategy of a training run for `state`.

    Args:
      state: the `TrainState` with the extras of its step options
        (`train_step.init(state)`), whose structure the compiled step will see.
      strategy: a name in `STRATEGIES`: "jit" (any mesh: data parallel, FSDP, tensor
        parallel, see `state_shardings`) or "pmap" (data parallel with a replicated state).
      mesh: from `make_mesh`; default all devices on the data axis.
      batch_axis: 0, or 1 when batches are stacked for `steps_per_call`.
      tensor_rules: the tensor-parallel rules (see `partition_spec`); a spec may be a list, as
        a config writes it (see `as_rules`). A mesh whose "tensor" axis no rule uses is an
        error: its devices would repeat each other's work.
      fsdp_min_size: leaves smaller than this stay replicated over "fsdp".

    Returns:
      A `ParallelStrategy`: its `step_kwargs` go to `make_train_step`.

    Example:
        >>> import numpy as np
        >>> type(setup({"w": np.zeros(3)}, "pmap")).__name__
        'PmapStrategy'
        >>> setup(state, "jit", make_mesh(data=2, fsdp=2, tensor=2))  # doctest: +SKIP
    """
    if strategy not in STRATEGIES:
        choices = " or ".join(f'"{name}" ({s.description})' for name, s in STRATEGIES.items())
        raise LayoutError(UNKNOWN_STRATEGY_MSG.format(strategy=strategy, choices=choices))
    return STRATEGIES[strategy].create(
        state,
        make_mesh() if mesh is None else mesh,
        batch_axis=batch_axis,
        tensor_rules=tensor_rules,
        fsdp_min_size=fsdp_min_size,
    )
