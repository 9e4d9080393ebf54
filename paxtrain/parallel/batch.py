"""Placing batches: split along the batch axis over the mesh's data and fsdp axes.

Each process reads only the rows of the global batch that its own devices hold
(`process_row_blocks`): from a step-indexed source that accepts `rows`
(`train_batch(step, rows=slice(a, b))`), or by slicing the whole batch of one that does not. The
rows need not be one block: on a TPU pod `jax.make_mesh`'s topology-aware device order gives a
host rows scattered over the batch. `place_rows` then builds the global arrays: with
`jax.make_array_from_process_local_data` when a process's rows are one block, with
`jax.make_array_from_callback` (each device gets its own rows) when they are not, and with a plain
`jax.device_put` on a single process.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paxtrain.errors import LayoutError
from paxtrain.parallel.mesh import BATCH_AXES, data_parallel_size

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
block, so the process cannot load them as one slice. Read them with `process_row_blocks` and \
place them with `place_rows` (as `shard_batch` and the `Trainer` do), which take any device order."""


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


def process_row_blocks(
    global_batch_size: int, mesh: Mesh, process_index: int | None = None
) -> tuple[slice, ...]:
    """The rows of the global batch that one process's devices hold, as blocks in order.

    Args:
      global_batch_size: examples per step, over all processes.
      mesh: the mesh the batch is split over.
      process_index: the process; default this one.

    Returns:
      A tuple of `slice`s of the batch axis, adjacent rows merged into one: a single block
      with `make_mesh` on GPUs and CPUs, several on a TPU pod whose device order follows the
      chips' torus.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> process_row_blocks(256, make_mesh())  # one process holds every row
        (slice(0, 256, None),)
    """
    _check_size(global_batch_size, data_parallel_size(mesh), _mesh_layout(mesh), "the batch")
    process = jax.process_index() if process_index is None else process_index
    indices = batch_sharding(mesh).devices_indices_map((global_batch_size,))
    rows = sorted(
        {
            (index[0].start or 0, global_batch_size if index[0].stop is None else index[0].stop)
            for device, index in indices.items()
            if device.process_index == process
        }
    )
    blocks: list[list[int]] = []
    for start, stop in rows:
        if blocks and blocks[-1][1] == start:
            blocks[-1][1] = stop
        else:
            blocks.append([start, stop])
    return tuple(slice(start, stop) for start, stop in blocks)


def process_batch_slice(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of the global batch that this process's devices hold, when they are one block
    (see `process_row_blocks` for any device order).

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
    blocks = process_row_blocks(global_batch_size, mesh)
    if len(blocks) > 1:
        rows = [(block.start, block.stop) for block in blocks]
        raise LayoutError(PROCESS_ROWS_MSG.format(process=jax.process_index(), rows=rows))
    return blocks[0]


def take_rows(batch: Any, rows: slice, batch_axis: int = 0) -> Any:
    """Rows `rows` of every leaf of `batch` along `batch_axis`.

    Example:
        >>> take_rows({"x": np.arange(6)}, slice(2, 4))
        {'x': array([2, 3])}
    """
    index = (slice(None),) * batch_axis + (rows,)
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[index], batch)


def accepts_rows(source: Any) -> bool:
    """Whether `source.train_batch` takes `rows=`, reading only those rows of a step's batch.

    Example:
        >>> class Source:
        ...     def train_batch(self, step, rows=None): ...
        >>> accepts_rows(Source())
        True
    """
    try:
        return "rows" in inspect.signature(source.train_batch).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def read_rows(source: Any, step: int, blocks: Sequence[slice], global_batch_size: int) -> tuple:
    """The blocks `blocks` of the batch of `step`, one batch of rows each.

    A source that accepts `rows` reads only those rows; otherwise its whole batch is read once
    and sliced. A single block that is the whole batch is read without `rows`.

    Example:
        >>> read_rows(data, 7, (slice(0, 8), slice(16, 24)), 32)  # doctest: +SKIP
    """
    whole = len(blocks) == 1 and blocks[0] == slice(0, global_batch_size)
    if whole:
        return (source.train_batch(step),)
    if accepts_rows(source):
        return tuple(source.train_batch(step, rows=block) for block in blocks)
    batch = source.train_batch(step)
    return tuple(take_rows(batch, block) for block in blocks)


def _rows_callback(
    blocks: Sequence[slice], parts: Sequence[np.ndarray], batch_axis: int
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """For `jax.make_array_from_callback`: a device's index into the global array, answered
    from the process's blocks of rows (`parts[i]` holds rows `blocks[i]`)."""

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        rows = index[batch_axis]
        start = rows.start or 0
        for block, part in zip(blocks, parts):
            if block.start <= start < block.stop:
                stop = block.stop if rows.stop is None else rows.stop
                local = slice(start - block.start, stop - block.start)
                return part[(*index[:batch_axis], local, *index[batch_axis + 1 :])]
        raise LayoutError(ROWS_NOT_READ_MSG.format(rows=(start, rows.stop), blocks=blocks))

    return callback


ROWS_NOT_READ_MSG = """\
A device of this process holds rows {rows} of the batch, which are in none of the blocks read \
({blocks}): read the blocks that `process_row_blocks` gives for the same mesh and batch size."""


ROWS_SHAPE_MSG = """\
Batch leaf {path} has {got} rows along axis {axis} where rows {start}:{stop} of the global batch \
({want}) were asked for: every step's batch must have the size of the first one, and a source \
that accepts `rows` must return exactly those rows."""


def _check_rows(part: Any, block: slice, batch_axis: int) -> None:
    want = block.stop - block.start

    def check(path, x):
        shape = np.shape(x)
        got = shape[batch_axis] if len(shape) > batch_axis else None
        if got != want:
            raise LayoutError(
                ROWS_SHAPE_MSG.format(
                    path=jax.tree_util.keystr(path), got=got, axis=batch_axis,
                    start=block.start, stop=block.stop, want=want,
                )
            )  # fmt: skip

    jax.tree_util.tree_map_with_path(check, part)


def place_rows(
    parts: Sequence[Any],
    blocks: Sequence[slice],
    global_batch_size: int,
    mesh: Mesh,
    batch_axis: int = 0,
) -> Any:
    """The global batch, as `jax.Array`s split like `batch_sharding`, from this process's rows.

    Args:
      parts: one batch of rows per block (`read_rows`), stacked along axis 0 when
        `batch_axis` is 1.
      blocks: this process's blocks of rows (`process_row_blocks`).
      global_batch_size: examples per step, over all processes.
      mesh: the mesh the batch is split over.
      batch_axis: 0, or 1 when batches are stacked for `steps_per_call`.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> blocks = process_row_blocks(64, make_mesh())
        >>> batch = place_rows([{"x": np.zeros((64, 3))}], blocks, 64, make_mesh())
        >>> batch["x"].shape
        (64, 3)
    """
    for part, block in zip(parts, blocks, strict=True):
        _check_rows(part, block, batch_axis)
    sharding = batch_sharding(mesh, batch_axis)
    if jax.process_count() == 1:
        return jax.device_put(parts[0], sharding)

    def leaf(*xs: Any) -> jax.Array:
        xs = [np.asarray(x) for x in xs]
        shape = list(xs[0].shape)
        shape[batch_axis] = global_batch_size
        if len(xs) == 1:  # one block: JAX splits it over this process's devices
            return jax.make_array_from_process_local_data(sharding, xs[0], tuple(shape))
        return jax.make_array_from_callback(
            tuple(shape), sharding, _rows_callback(blocks, xs, batch_axis)
        )

    return jax.tree_util.tree_map(leaf, *parts)


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Places a global batch on the mesh, split along `batch_axis` (see `batch_sharding`).

    Every process passes the same global batch and transfers only its own devices' rows.

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
    size = np.shape(jax.tree_util.tree_leaves(batch)[0])[batch_axis]
    blocks = process_row_blocks(size, mesh)
    one_process = jax.process_count() == 1
    parts = [batch] if one_process else [take_rows(batch, b, batch_axis) for b in blocks]
    return place_rows(parts, blocks, size, mesh, batch_axis)


class ProcessRows:
    """A view of a step-indexed source that reads only this process's rows of each batch.

    `train_batch(step)` gives one batch of rows per block (`read_rows`) and `place` builds the
    global batch from them, or from several steps' stacked along axis 0 (a `Prefetcher` with
    `group`): `Prefetcher(rows, step, put=rows.place)`. Made by a strategy's `process_rows`
    (`ParallelStrategy`).

    Example:
        >>> rows = plan.process_rows(data, global_batch_size=32)  # doctest: +SKIP
        >>> batch = rows.place(rows.train_batch(0))                # doctest: +SKIP
    """

    def __init__(
        self,
        source: Any,
        blocks: Sequence[slice],
        global_batch_size: int,
        place: Callable[[Sequence[Any]], Any],
    ):
        self.source, self.blocks, self.global_batch_size = source, tuple(blocks), global_batch_size
        self.place = place
        self.info = getattr(source, "info", {})

    def train_batch(self, step: int) -> tuple:
        return read_rows(self.source, step, self.blocks, self.global_batch_size)

    def eval_batches(self) -> Any:
        return self.source.eval_batches()
