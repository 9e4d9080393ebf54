"""The "pmap" strategy: a copy of the state on every local device, batches split over them.

The state carries a leading device axis (`replicate`), each device runs the step on its slice of
the batch (`shard_over_devices`), and `average_over_devices` averages the gradients with
`lax.pmean`, so every copy takes the same update. `PmapStrategy` is all of it as one object.

In this JAX version `jax.pmap` is implemented with `jax.jit` and `jax.shard_map`, and its arrays
are ordinary `jax.Array`s sharded along the device axis; the `jit` strategy with
`make_mesh(data=-1)` does the same work and is the one to prefer. `pmap` stays for code that
relies on the per-device view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paxtrain.core.module import STATE
from paxtrain.core.partition import map_array_fields
from paxtrain.errors import LayoutError
from paxtrain.parallel.batch import ProcessRows, check_batch_divisible, take_rows
from paxtrain.parallel.mesh import DATA, FSDP, TENSOR
from paxtrain.parallel.sharding import Rule
from paxtrain.parallel.strategy import ParallelStrategy

# The name `lax.pmean` reduces over; it is also the axis name of the device mesh below.
PMAP_AXIS = "devices"

PMAP_MESH_MSG = """\
The "pmap" strategy is data parallel only, but the mesh asks for {layout}. Use strategy="jit" for \
FSDP and tensor parallelism, or a mesh with fsdp=1 and tensor=1."""


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


def average_over_devices(grad_fn: Callable, axis_name: str = PMAP_AXIS) -> Callable:
    """Data parallelism inside `jax.pmap`: averages over the devices of `axis_name`.

    The loss, the floating-point metrics and the gradients are averaged with `lax.pmean`, so every
    device applies the update of the whole batch; so are the model's floating-point states
    (BatchNorm running statistics), so the copies stay equal; the batch statistics a BatchNorm
    normalizes with are still those of the device's slice. The PRNG key is folded with the device
    index, so each device draws different dropout masks for its examples.

    Args:
      grad_fn: a `GradFn` (`paxtrain.train.gradients`) of one device's slice of the batch.
      axis_name: the `axis_name` of the enclosing `jax.pmap`.

    Returns:
      A `GradFn` to call inside `jax.pmap(..., axis_name=axis_name)`.

    Example:
        >>> import paxtrain.nn as nn
        >>> model = nn.Linear(2, 2)
        >>> averaged = average_over_devices(lambda state, b, key: (b.mean(), model, {}, 2 * b))
        >>> n = jax.local_device_count()
        >>> rows = np.arange(n, dtype=np.float32)[:, None].repeat(2, axis=1)  # device i: [i, i]
        >>> loss, grads = jax.pmap(lambda b: averaged(None, b, None)[::3], PMAP_AXIS)(rows)
        >>> bool((loss == (n - 1) / 2).all()), bool((grads == n - 1).all())
        (True, True)
    """

    def mean_of_floats(tree: Any) -> Any:
        return jax.tree_util.tree_map(
            lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x,
            tree,
        )

    def averaged(state: Any, batch: Any, key: jax.Array | None):
        if key is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        loss, model, metrics, grads = grad_fn(state, batch, key)
        loss, metrics, grads = mean_of_floats((loss, metrics, grads))
        # States only: frozen parameters are equal on every device and may be large.
        model = map_array_fields(
            lambda node, kind, value: mean_of_floats(value) if kind == STATE else value, model
        )
        return loss, model, metrics, grads

    return averaged


@dataclasses.dataclass(frozen=True)
class PmapStrategy(ParallelStrategy):
    """`jax.pmap` over the local devices: a replicated state with a leading device axis, each
    device's slice of the batch, gradients averaged (`average_over_devices`).

    It evaluates on one device (`unreplicate`) and checkpoints global arrays replicated over
    every process's devices (`global_copy`).

    Example:
        >>> from paxtrain import parallel
        >>> strategy = parallel.setup({"w": np.zeros(3)}, "pmap")
        >>> state = strategy.place({"w": np.zeros(3)})
        >>> state["w"].shape == (jax.local_device_count(), 3), strategy.unreplicate(state)["w"].shape
        (True, (3,))
    """

    name: ClassVar[str] = "pmap"
    description: ClassVar[str] = "jax.pmap: data parallel over the local devices"
    # Replicated anyway: the state is built eagerly, then placed.
    state_shardings: ClassVar[None] = None
    mesh: Mesh
    batch_axis: int = 0

    @classmethod
    def create(
        cls,
        state: Any,
        mesh: Mesh,
        *,
        batch_axis: int,
        tensor_rules: Sequence[Rule],
        fsdp_min_size: int,
    ) -> PmapStrategy:
        """The strategy on `mesh`, which must be data parallel only; `state`, `tensor_rules` and
        `fsdp_min_size` play no part (every device holds the whole state).

        Example:
            >>> PmapStrategy.create(None, make_mesh(), batch_axis=0, tensor_rules=(),
            ...                     fsdp_min_size=1).batch_axis
            0
        """
        if mesh.shape[FSDP] > 1 or mesh.shape[TENSOR] > 1:
            layout = ", ".join(f"{axis}={mesh.shape[axis]}" for axis in (DATA, FSDP, TENSOR))
            raise LayoutError(PMAP_MESH_MSG.format(layout=layout))
        return cls(mesh, batch_axis)

    def compile_step(
        self, step: Callable, *, donate: bool = True, flat_state: bool = False
    ) -> Callable:
        """`jax.pmap` of `step` over `PMAP_AXIS` (the state, flat or not, keeps its device
        axis), with one copy of the metrics: the float ones are averaged, so equal on every
        device; integer ones come from the first.

        Example:
            >>> from paxtrain import parallel
            >>> strategy = parallel.setup({"w": np.zeros(3)}, "pmap")
            >>> step = strategy.compile_step(lambda s, b: (s, {"n": b.sum()}), donate=False)
            >>> n = jax.local_device_count()
            >>> float(step(strategy.place({"w": np.zeros(3)}), strategy.put_batch(np.ones(n)))[1]["n"])
            1.0
        """
        donate_argnums = (0,) if donate else ()
        return jax.pmap(step, PMAP_AXIS, donate_argnums=donate_argnums, out_axes=(0, None))

    def reduce_gradients(self, grad_fn: Callable) -> Callable:
        """`average_over_devices(grad_fn)`: every copy of the state takes the whole batch's
        update.

        Example:
            >>> grad_fn = strategy.reduce_gradients(loss_and_grads(loss_fn))  # doctest: +SKIP
        """
        return average_over_devices(grad_fn, PMAP_AXIS)

    def place(self, state: Any) -> Any:
        """`state` replicated on every local device (`replicate`).

        Example:
            >>> state = strategy.place(state)  # doctest: +SKIP
        """
        return replicate(state)

    def put_batch(self, batch: Any) -> Any:
        """One global batch, this process's rows split over its devices (`shard_over_devices`).

        Example:
            >>> batch = strategy.put_batch(data.train_batch(step))  # doctest: +SKIP
        """
        return shard_over_devices(batch, self.batch_axis)

    def process_rows(self, source: Any, global_batch_size: int) -> ProcessRows:
        """A view of `source` reading this process's one block of rows (`process_rows`).

        Example:
            >>> rows = strategy.process_rows(data, global_batch_size=32)  # doctest: +SKIP
        """

        def place(parts):
            return put_process_rows(parts[0], self.batch_axis)

        blocks = (process_rows(global_batch_size),)
        return ProcessRows(source, blocks, global_batch_size, place)

    def put_eval_batch(self, batch: Any) -> Any:
        """`batch` as it is: the eval step runs on one device, on `unreplicate(state)`."""
        return batch

    def check_eval_batch(self, batch: Any) -> None:
        """Nothing to check: one device evaluates any batch."""

    def unreplicate(self, state: Any) -> Any:
        """The first local device's copy of the state (`unreplicate`)."""
        return unreplicate(state)

    def checkpoint_state(self, state: Any) -> Any:
        """Global arrays replicated over every process's devices (`global_copy`), which Orbax
        can write from several processes."""
        return global_copy(state)
