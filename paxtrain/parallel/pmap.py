"""The `jax.pmap` strategy: a copy of the state on every local device, batches split over them.

The state carries a leading device axis (`replicate`), each device runs the step on its slice of
the batch (`shard_over_devices`), and `average_over_devices` (in `paxtrain.train.gradients`)
averages the gradients with `lax.pmean`, so every copy takes the same update.

In this JAX version `jax.pmap` is implemented with `jax.jit` and `jax.shard_map`, and its arrays
are ordinary `jax.Array`s sharded along the device axis; the `jit` strategy with
`make_mesh(data=-1)` does the same work and is the one to prefer. `pmap` stays for code that
relies on the per-device view.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paxtrain.parallel.batch import check_batch_divisible, take_rows

# The name `lax.pmean` reduces over; it is also the axis name of the device mesh below.
PMAP_AXIS = "devices"


def _device_sharding() -> NamedSharding:
    # The sharding `jax.pmap` itself gives its outputs, so inputs placed with it are not moved.
    mesh = Mesh(np.array(jax.local_devices()), (PMAP_AXIS,))
    return NamedSharding(mesh, PartitionSpec(PMAP_AXIS))


def _local_value(x: Any) -> np.ndarray:
    # A global array replicated over several processes (a restored checkpoint) is read from
    # this process's own copy.
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def replicate(tree: Any) -> Any:
    """`tree` with a leading axis of `jax.local_device_count()` copies, one on each device.

    Example:
        >>> replicate({"w": np.ones(3)})["w"].shape == (jax.local_device_count(), 3)
        True
    """
    count = jax.local_device_count()
    sharding = _device_sharding()
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(np.broadcast_to(_local_value(x), (count, *np.shape(x))), sharding),
        tree,
    )


def _device_copy(shard: jax.Shard) -> jax.Array:
    """One device's copy of a replicated leaf, without the device axis, on that device alone.

    Read from the device's own buffer, never by indexing the whole array (`x[0]`): that
    compiles a program over every local device with an all-reduce. On several processes
    XLA:CPU runs it through gloo, and such programs, one per leaf each time the state is read,
    interleaved with the step's cross-process all-reduce, hang the processes (issue 12).
    """
    return shard.data[0]


def _first_row(shard: jax.Shard) -> int:
    return shard.index[0].start or 0


def unreplicate(tree: Any) -> Any:
    """The first local device's copy of a replicated tree: no device axis, on that device.

    Example:
        >>> w = unreplicate(replicate({"w": np.ones(3)}))["w"]
        >>> w.shape, w.devices() == {jax.local_devices()[0]}
        ((3,), True)
    """

    def leaf(x: Any) -> Any:
        if not isinstance(x, jax.Array):
            return x[0]
        return _device_copy(min(x.addressable_shards, key=_first_row))

    return jax.tree_util.tree_map(leaf, tree)


def global_copy(tree: Any) -> Any:
    """A replicated tree without its device axis, as global arrays replicated over every device
    of every process: what Orbax saves from several processes (it cannot write `x[0]`, an
    array local to one process) and restores into. Each device's copy stays where it is.

    Example:
        >>> global_copy(replicate({"w": np.ones(3)}))["w"].sharding.is_fully_replicated
        True
    """
    sharding = NamedSharding(Mesh(np.array(jax.devices()), (PMAP_AXIS,)), PartitionSpec())

    def leaf(x: jax.Array) -> jax.Array:
        copies = [_device_copy(shard) for shard in x.addressable_shards]
        return jax.make_array_from_single_device_arrays(x.shape[1:], sharding, copies)

    return jax.tree_util.tree_map(leaf, tree)


def process_rows(global_batch_size: int) -> slice:
    """The block of rows of a global batch that this process's devices take under "pmap".

    Example:
        >>> process_rows(64) == slice(0, 64)  # a single process takes them all
        True
    """
    rows = global_batch_size // jax.process_count()
    return slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)


def put_process_rows(batch: Any, batch_axis: int = 0) -> Any:
    """This process's rows of a batch, split over its devices along a new leading axis.

    Example:
        >>> x = put_process_rows({"x": np.zeros((64, 3))})["x"]
        >>> x.shape == (jax.local_device_count(), 64 // jax.local_device_count(), 3)
        True
    """
    local = jax.local_device_count()

    def split(x):
        x = np.asarray(x)
        rows = x.shape[batch_axis]
        shape = (*x.shape[:batch_axis], local, rows // local, *x.shape[batch_axis + 1 :])
        return np.moveaxis(x.reshape(shape), batch_axis, 0)

    return jax.device_put(jax.tree_util.tree_map(split, batch), _device_sharding())


def shard_over_devices(batch: Any, batch_axis: int = 0) -> Any:
    """Splits a batch into `jax.local_device_count()` slices along a new leading device axis.

    On several processes each passes the same global batch and keeps its own block of rows.

    Args:
      batch: a pytree of arrays.
      batch_axis: 0, or 1 when batches are stacked for `steps_per_call`.

    Example:
        >>> x = shard_over_devices({"x": np.zeros((64, 3))})["x"]
        >>> x.shape == (jax.local_device_count(), 64 // jax.local_device_count(), 3)
        True
    """
    local, processes = jax.local_device_count(), jax.process_count()
    check_batch_divisible(
        batch, local * processes, batch_axis, f"pmap over {local * processes} devices"
    )
    size = np.shape(jax.tree_util.tree_leaves(batch)[0])[batch_axis]
    return put_process_rows(take_rows(batch, process_rows(size), batch_axis), batch_axis)
