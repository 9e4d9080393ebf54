"""`setup`: one call that decides where the state and the batches live and how the step compiles."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paxtrain.errors import LayoutError
from paxtrain.parallel import pmap
from paxtrain.parallel.batch import (
    ProcessRows,
    batch_sharding,
    check_batch_divisible,
    place_rows,
    process_row_blocks,
    shard_batch,
)
from paxtrain.parallel.mesh import DATA, FSDP, TENSOR, data_parallel_size, make_mesh
from paxtrain.parallel.pmap import PMAP_AXIS, replicate, shard_over_devices, unreplicate
from paxtrain.parallel.sharding import (
    DEFAULT_FSDP_MIN_SIZE,
    DEFAULT_TENSOR_RULES,
    Rule,
    as_rules,
    check_tensor_axis_used,
    state_shardings,
)

STRATEGIES = ("jit", "pmap")

UNKNOWN_STRATEGY_MSG = """\
Unknown parallel strategy {strategy!r}; choose "jit" (jax.jit on a mesh: data parallel, FSDP and \
tensor parallel) or "pmap" (jax.pmap: data parallel over the local devices)."""

PMAP_MESH_MSG = """\
The "pmap" strategy is data parallel only, but the mesh asks for {layout}. Use strategy="jit" for \
FSDP and tensor parallelism, or a mesh with fsdp=1 and tensor=1."""


@dataclasses.dataclass(frozen=True)
class ParallelPlan:
    """Where the state and the batches live, and the arguments that compile the step for it.

    Made by `setup`. `step_kwargs` go to `make_train_step`, `put_batch` places each batch (a
    `Prefetcher`'s `put`), `place` lays out a state: a fresh one, and one changed outside the
    step with new arrays (a rollback's extras), which laid out otherwise would make the step
    compile again. `unreplicate` gives the state without the "pmap" strategy's device axis, for
    evaluation and checkpoints; the "jit" strategy's sharded state serves both as it is (a
    checkpoint restored into it keeps its layout).

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> plan = setup(train_step.init(state), "jit", make_mesh(data=-1))  # doctest: +SKIP
        >>> train_step = make_train_step(loss_fn, **plan.step_kwargs)         # doctest: +SKIP
        >>> state, metrics = train_step(plan.place(state), plan.put_batch(batch))  # doctest: +SKIP
    """

    strategy: str
    mesh: Mesh
    state_shardings: Any
    batch_axis: int = 0

    @property
    def step_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `make_train_step` for this plan.

        Example:
            >>> train_step = make_train_step(loss_fn, **plan.step_kwargs)  # doctest: +SKIP
        """
        if self.strategy == "pmap":
            return {"pmap_axis_name": PMAP_AXIS}
        # Metrics replicated: every process can read them (only the main one logs them).
        metrics = NamedSharding(self.mesh, PartitionSpec())
        return {
            "in_shardings": (self.state_shardings, batch_sharding(self.mesh, self.batch_axis)),
            "out_shardings": (self.state_shardings, metrics),
        }

    def place(self, state: Any) -> Any:
        """`state` laid out for the step: sharded on the mesh, or replicated for "pmap".

        Example:
            >>> state = plan.place(state)  # doctest: +SKIP
        """
        if self.strategy == "pmap":
            return replicate(state)
        return jax.device_put(state, self.state_shardings)

    def check_batch(self, batch: Any) -> None:
        """Raises a `LayoutError` unless one batch (batch axis 0) splits evenly over the
        data-parallel devices; before training, so a bad batch size fails at once.

        Example:
            >>> plan.check_batch(data.train_batch(0))  # doctest: +SKIP
        """
        parts = data_parallel_size(self.mesh)
        check_batch_divisible(batch, parts, 0, f"{self.strategy} over {parts} devices")

    def check_eval_batch(self, batch: Any) -> None:
        """Raises a `LayoutError` unless `put_eval_batch` can place `batch`: every leaf needs a
        batch axis (any size: one that does not split is evaluated replicated). Before
        training, so it fails at once rather than at the first evaluation.

        Example:
            >>> plan.check_eval_batch(next(data.eval_batches()))  # doctest: +SKIP
        """
        if self.strategy != "pmap":  # "pmap" evaluates on one device: any batch fits
            check_batch_divisible(batch, 1, 0, name="eval batch")

    def put_batch(self, batch: Any) -> Any:
        """Places one global batch (the same on every process) for the step.

        Example:
            >>> batch = plan.put_batch(data.train_batch(step))  # doctest: +SKIP
        """
        if self.strategy == "pmap":
            return shard_over_devices(batch, self.batch_axis)
        return shard_batch(batch, self.mesh, self.batch_axis)

    def process_rows(self, source: Any, global_batch_size: int) -> ProcessRows:
        """A view of `source` that reads only this process's rows of each training batch and
        places them (see `ProcessRows`); the trainer's prefetcher reads through it.

        Example:
            >>> rows = plan.process_rows(data, global_batch_size=32)  # doctest: +SKIP
            >>> batch = rows.place(rows.train_batch(0))                # doctest: +SKIP
        """
        if self.strategy == "pmap":
            blocks = (pmap.process_rows(global_batch_size),)

            def place(parts):
                return pmap.put_process_rows(parts[0], self.batch_axis)
        else:
            blocks = process_row_blocks(global_batch_size, self.mesh)

            def place(parts):
                return place_rows(parts, blocks, global_batch_size, self.mesh, self.batch_axis)

        return ProcessRows(source, blocks, global_batch_size, place)

    def put_eval_batch(self, batch: Any) -> Any:
        """Places one evaluation batch (batch axis 0) for an eval step on `unreplicate(state)`:
        split over the mesh for "jit" (replicated when its size does not split evenly, as a
        ragged last batch), left to the step's one device for "pmap".

        Example:
            >>> metrics = eval_step(state, plan.put_eval_batch(batch))  # doctest: +SKIP
        """
        if self.strategy == "pmap":
            return batch
        size = np.shape(jax.tree_util.tree_leaves(batch)[0])[0]
        if size % data_parallel_size(self.mesh):
            # A ragged last eval batch does not split evenly: every device evaluates it whole.
            replicated = NamedSharding(self.mesh, PartitionSpec())
            return jax.tree_util.tree_map(
                lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), batch
            )
        return shard_batch(batch, self.mesh, 0)

    def checkpoint_state(self, state: Any) -> Any:
        """The state laid out as checkpoints save and restore it: the "jit" strategy's state
        as it is, the "pmap" one as global arrays replicated over every process's devices
        (`pmap.global_copy`), which Orbax can write from several processes.

        Example:
            >>> manager.save(plan.checkpoint_state(placed_state))  # doctest: +SKIP
        """
        return pmap.global_copy(state) if self.strategy == "pmap" else state

    def unreplicate(self, state: Any) -> Any:
        """`state` without the "pmap" device axis; the "jit" strategy's state unchanged.

        Example:
            >>> eval_metrics = eval_step(plan.unreplicate(state), batch)  # doctest: +SKIP
        """
        return unreplicate(state) if self.strategy == "pmap" else state


def setup(
    state: Any,
    strategy: str = "jit",
    mesh: Mesh | None = None,
    *,
    batch_axis: int = 0,
    tensor_rules: Sequence[Rule] = DEFAULT_TENSOR_RULES,
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE,
) -> ParallelPlan:
    """Plans the parallel layout of a training run for `state`.

    Args:
      state: the `TrainState` with the extras of its step options
        (`train_step.init(state)`), whose structure the compiled step will see.
      strategy: "jit" (any mesh: data parallel, FSDP, tensor parallel, see `state_shardings`)
        or "pmap" (data parallel with a replicated state).
      mesh: from `make_mesh`; default all devices on the data axis.
      batch_axis: 0, or 1 when batches are stacked for `steps_per_call`.
      tensor_rules: the tensor-parallel rules (see `partition_spec`); a spec may be a list, as
        a config writes it (see `as_rules`). A mesh whose "tensor" axis no rule uses is an
        error: its devices would repeat each other's work.
      fsdp_min_size: leaves smaller than this stay replicated over "fsdp".

    Returns:
      A `ParallelPlan`.

    Example:
        >>> from paxtrain.parallel import make_mesh
        >>> plan = setup(state, "jit", make_mesh(data=2, fsdp=2, tensor=2))  # doctest: +SKIP
        >>> state = plan.place(state)                                         # doctest: +SKIP
    """
    if strategy not in STRATEGIES:
        raise LayoutError(UNKNOWN_STRATEGY_MSG.format(strategy=strategy))
    mesh = make_mesh() if mesh is None else mesh
    if strategy == "pmap":
        if mesh.shape[FSDP] > 1 or mesh.shape[TENSOR] > 1:
            layout = ", ".join(f"{axis}={mesh.shape[axis]}" for axis in (DATA, FSDP, TENSOR))
            raise LayoutError(PMAP_MESH_MSG.format(layout=layout))
        return ParallelPlan(strategy, mesh, None, batch_axis)
    shardings = state_shardings(state, mesh, as_rules(tensor_rules), fsdp_min_size)
    check_tensor_axis_used(shardings, mesh)
    return ParallelPlan(strategy, mesh, shardings, batch_axis)
