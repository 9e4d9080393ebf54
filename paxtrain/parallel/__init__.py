"""Training on several devices and several processes.

    >>> from paxtrain import parallel
    >>> mesh = parallel.make_mesh(data=-1, fsdp=1, tensor=1)
    >>> mesh.shape["data"] == jax.device_count()
    True

One strategy object covers the state, the batches and the compiled step (see `setup`):

    state = train_step.init(TrainState.create(model, optimizer))
    strategy = parallel.setup(state, "jit", parallel.make_mesh(data=2, fsdp=2, tensor=2))
    train_step = make_train_step(loss_fn, **strategy.step_kwargs)
    state = strategy.place(state)
    state, metrics = train_step(state, strategy.put_batch(batch))

| file | idea |
|---|---|
| `mesh.py` | `make_mesh`: the ("data", "fsdp", "tensor") device mesh |
| `sharding.py` | the state's layout: replicated, FSDP, tensor-parallel rules |
| `batch.py` | batches split over the data axes; each process reads and places its own rows |
| `strategy.py` | `ParallelStrategy`: the methods every strategy has (place, put_batch, compile_step...) |
| `jit_strategy.py` | the `jax.jit` strategy: the state sharded on the mesh |
| `pmap_strategy.py` | the `jax.pmap` strategy: replicated state, per-device batch slices |
| `plan.py` | `setup`: the strategy by name from the `STRATEGIES` registry |
| `init.py` | `build_sharded`: the state built under `jax.jit`, each device making only its shards |
| `distributed.py` | `initialize_distributed`, `is_main_process` |
"""

from paxtrain.errors import LayoutError
from paxtrain.parallel.batch import (
    ProcessRows,
    accepts_rows,
    batch_sharding,
    check_batch_divisible,
    place_rows,
    process_batch_slice,
    process_row_blocks,
    read_rows,
    shard_batch,
    take_rows,
)
from paxtrain.parallel.distributed import (
    DistributedSettings,
    detect_distributed,
    initialize_distributed,
    is_main_process,
    on_cloud_tpu_vm,
)
from paxtrain.parallel.init import (
    arrays_by_leaf,
    build_sharded,
    jit_build,
    laid_out,
    seeded,
    with_leaves,
)
from paxtrain.parallel.jit_strategy import JitStrategy
from paxtrain.parallel.mesh import (
    AXES,
    BATCH_AXES,
    DATA,
    FSDP,
    TENSOR,
    data_parallel_size,
    make_mesh,
)
from paxtrain.parallel.plan import STRATEGIES, setup
from paxtrain.parallel.pmap_strategy import (
    PMAP_AXIS,
    PmapStrategy,
    average_over_devices,
    replicate,
    shard_over_devices,
    unreplicate,
)
from paxtrain.parallel.sharding import (
    DEFAULT_FSDP_MIN_SIZE,
    DEFAULT_TENSOR_RULES,
    Rule,
    as_rules,
    check_tensor_axis_used,
    column_parallel,
    column_parallel_adapter,
    partition_spec,
    row_parallel,
    row_parallel_adapter,
    state_shardings,
)
from paxtrain.parallel.strategy import ParallelStrategy

__all__ = [
    "AXES",
    "BATCH_AXES",
    "DATA",
    "DEFAULT_FSDP_MIN_SIZE",
    "DEFAULT_TENSOR_RULES",
    "FSDP",
    "PMAP_AXIS",
    "STRATEGIES",
    "TENSOR",
    "DistributedSettings",
    "JitStrategy",
    "LayoutError",
    "ParallelStrategy",
    "PmapStrategy",
    "ProcessRows",
    "Rule",
    "accepts_rows",
    "arrays_by_leaf",
    "as_rules",
    "average_over_devices",
    "batch_sharding",
    "build_sharded",
    "check_batch_divisible",
    "check_tensor_axis_used",
    "column_parallel",
    "column_parallel_adapter",
    "data_parallel_size",
    "detect_distributed",
    "initialize_distributed",
    "is_main_process",
    "jit_build",
    "laid_out",
    "make_mesh",
    "on_cloud_tpu_vm",
    "partition_spec",
    "place_rows",
    "process_batch_slice",
    "process_row_blocks",
    "read_rows",
    "replicate",
    "row_parallel",
    "row_parallel_adapter",
    "seeded",
    "setup",
    "shard_batch",
    "shard_over_devices",
    "state_shardings",
    "take_rows",
    "unreplicate",
    "with_leaves",
]
