"""Placing batches: split along the batch axis over the mesh's data and fsdp axes.

Every process passes the same global batch (a step-indexed `DataSource` makes that free); each
process transfers only the rows its own devices hold (`process_batch_slice`), so nothing crosses
hosts. A data loader that reads only its own rows can instead build the global array itself with
`jax.make_array_from_process_local_data(batch_sharding(mesh), local_rows)`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paxtrain.parallel.mesh import BATCH_AXES, LayoutError, data_parallel_size

BATCH_DIVISIBLE_MSG = """\
The global batch size {size} ({where}) is not divisible by the data-parallel size \
{parts} ({layout}): every device must get the same number of examples. Use a global batch size \
that is a multiple of {parts} (e.g. {suggestion}), or a device layout whose data-parallel size \
divides {size}."""

BATCH_RANK_MSG = """\
Batch leaf {path} has shape {shape}, with no batch axis {axis} to split over devices. Every leaf \
of a batch needs one: put per-batch constants in the model or the loss function instead."""

PROCESS_ROWS_MSG = """\
The devices of process {process} hold rows {rows} of the batch, which are not one contiguous \
block, so the process cannot load them as one slice. Build the mesh with `make_mesh` (it keeps \
each process's devices together along the batch axes)."""


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """The sharding of batch leaves: `batch_axis` split over ("data", "fsdp"), rest replicated.

    Args:
      mesh: a mesh from `make_mesh`.
      batch_axis: 0, or 1 when batches are stacked for `steps_per_call`.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> batch_sharding(make_mesh()).spec
        P(('data', 'fsdp'),)
    """
    return NamedSharding(mesh, PartitionSpec(*[None] * batch_axis, BATCH_AXES))


def check_batch_divisible(
    batch: Any, parts: int, batch_axis: int = 0, layout: str = "", name: str = "batch"
) -> None:
    """Raises a clear error unless every leaf's `batch_axis` splits into `parts` equal slices.

    Args:
      batch: a pytree of arrays.
      parts: the data-parallel size.
      batch_axis: the axis to split.
      layout: how the devices are arranged, for the message (e.g. "mesh data=4 x fsdp=2").
      name: what `batch` is, for the message ("batch", "eval batch").

    Example:
        >>> check_batch_divisible({"x": np.zeros((12, 3))}, 4)
    """

    def check(path, x):
        shape = np.shape(x)
        if len(shape) <= batch_axis:
            raise LayoutError(
                BATCH_RANK_MSG.format(path=jax.tree_util.keystr(path), shape=shape, axis=batch_axis)
            )
        where = f"axis {batch_axis} of {name}{jax.tree_util.keystr(path)}"
        _check_size(shape[batch_axis], parts, layout, where)

    jax.tree_util.tree_map_with_path(check, batch)


def _check_size(size: int, parts: int, layout: str, where: str) -> None:
    if size % parts:
        lower = size // parts * parts
        raise LayoutError(
            BATCH_DIVISIBLE_MSG.format(
                size=size, where=where, parts=parts, layout=layout or f"{parts} devices",
                suggestion=" or ".join(str(n) for n in (lower, lower + parts) if n > 0),
            )
        )  # fmt: skip


def _mesh_layout(mesh: Mesh) -> str:
    return "mesh " + " x ".join(f"{axis}={mesh.shape[axis]}" for axis in BATCH_AXES)


def process_batch_slice(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of the global batch that this process's devices hold.

    Args:
      global_batch_size: examples per step, over all processes.
      mesh: the mesh the batch is split over.

    Returns:
      A `slice` of the batch axis; all of it on a single process.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> process_batch_slice(256, make_mesh())  # one process holds every row
        slice(0, 256, None)
    """
    _check_size(global_batch_size, data_parallel_size(mesh), _mesh_layout(mesh), "the batch")
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    rows = sorted(
        {(index[0].start or 0, index[0].stop or global_batch_size) for index in indices.values()}
    )
    if any(stop != start for (_, stop), (start, _) in zip(rows, rows[1:])):
        raise LayoutError(PROCESS_ROWS_MSG.format(process=jax.process_index(), rows=rows))
    return slice(rows[0][0], rows[-1][1])


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Places a global batch on the mesh, split along `batch_axis` (see `batch_sharding`).

    Args:
      batch: a pytree of arrays, the same global batch on every process.
      mesh: a mesh from `make_mesh`.
      batch_axis: 0, or 1 when batches are stacked for `steps_per_call`.

    Returns:
      The batch as global `jax.Array`s; raises a clear error when the batch size is not a
      multiple of the data-parallel size.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> batch = shard_batch({"x": np.zeros((64, 3))}, make_mesh())
        >>> batch["x"].sharding.spec
        P(('data', 'fsdp'),)
    """
    check_batch_divisible(batch, data_parallel_size(mesh), batch_axis, _mesh_layout(mesh))
    sharding = batch_sharding(mesh, batch_axis)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    size = np.shape(jax.tree_util.tree_leaves(batch)[0])[batch_axis]
    rows = (slice(None),) * batch_axis + (process_batch_slice(size, mesh),)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x[rows]), np.shape(x)
        ),
        batch,
    )
