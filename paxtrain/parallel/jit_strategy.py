"""The "jit" strategy: the state laid out on a mesh by its shardings, the step partitioned by
`jax.jit` (data parallel, FSDP and tensor parallel, in any mix the mesh asks for)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paxtrain.parallel.batch import (
    ProcessRows,
    batch_sharding,
    check_batch_divisible,
    place_rows,
    process_row_blocks,
    shard_batch,
)
from paxtrain.parallel.mesh import data_parallel_size
from paxtrain.parallel.sharding import Rule, as_rules, check_tensor_axis_used, state_shardings
from paxtrain.parallel.strategy import ParallelStrategy


@dataclasses.dataclass(frozen=True)
class JitStrategy(ParallelStrategy):
    """`jax.jit` over `mesh`, the state in `state_shardings` (see `parallel.state_shardings`).

    Its state serves evaluation and checkpoints as it is: a checkpoint restored into it keeps
    its layout.

    Example:
        >>> from paxtrain import parallel
        >>> strategy = parallel.setup({"w": np.zeros((8, 2))}, "jit")
        >>> state = strategy.place({"w": np.zeros((8, 2))})
        >>> strategy.unreplicate(state) is state, strategy.checkpoint_state(state) is state
        (True, True)
    """

    name: ClassVar[str] = "jit"
    description: ClassVar[str] = "jax.jit on a mesh: data parallel, FSDP and tensor parallel"
    mesh: Mesh
    state_shardings: Any
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
    ) -> JitStrategy:
        """The strategy laying `state` out on `mesh` (see `setup`).

        Example:
            >>> JitStrategy.create({"w": np.zeros(3)}, make_mesh(), batch_axis=0,
            ...                    tensor_rules=(), fsdp_min_size=1).state_shardings["w"].spec
            P(None,)
        """
        shardings = state_shardings(state, mesh, as_rules(tensor_rules), fsdp_min_size)
        check_tensor_axis_used(shardings, mesh)
        return cls(mesh, shardings, batch_axis)

    def compile_step(
        self, step: Callable, *, donate: bool = True, flat_state: bool = False
    ) -> Callable:
        """`jax.jit` of `step` with the state in its shardings on the way in and out, so each
        step's output is the next one's input without a copy or a recompilation; the metrics
        replicated, so every process can read them (only the main one logs them).

        Example:
            >>> from paxtrain import parallel
            >>> strategy = parallel.setup({"w": np.zeros(3)}, "jit")
            >>> step = strategy.compile_step(lambda s, b: (s, {"n": b.sum()}), donate=False)
            >>> float(step(strategy.place({"w": np.zeros(3)}), strategy.put_batch(np.ones(8)))[1]["n"])
            8.0
        """
        state = self.state_shardings
        if flat_state:
            state = jax.tree_util.tree_leaves(state)
        metrics = NamedSharding(self.mesh, PartitionSpec())
        return jax.jit(
            step,
            donate_argnums=(0,) if donate else (),
            in_shardings=(state, batch_sharding(self.mesh, self.batch_axis)),
            out_shardings=(state, metrics),
        )

    def place(self, state: Any) -> Any:
        """`state` sharded on the mesh.

        Example:
            >>> state = strategy.place(state)  # doctest: +SKIP
        """
        return jax.device_put(state, self.state_shardings)

    def put_batch(self, batch: Any) -> Any:
        """One global batch split over the mesh's data axes (see `shard_batch`).

        Example:
            >>> batch = strategy.put_batch(data.train_batch(step))  # doctest: +SKIP
        """
        return shard_batch(batch, self.mesh, self.batch_axis)

    def process_rows(self, source: Any, global_batch_size: int) -> ProcessRows:
        """A view of `source` reading this process's blocks of rows (see `process_row_blocks`).

        Example:
            >>> rows = strategy.process_rows(data, global_batch_size=32)  # doctest: +SKIP
            >>> batch = rows.place(rows.train_batch(0))                    # doctest: +SKIP
        """
        blocks = process_row_blocks(global_batch_size, self.mesh)

        def place(parts):
            return place_rows(parts, blocks, global_batch_size, self.mesh, self.batch_axis)

        return ProcessRows(source, blocks, global_batch_size, place)

    def put_eval_batch(self, batch: Any) -> Any:
        """One evaluation batch split over the mesh, or replicated when its size does not split
        evenly (a ragged last batch).

        Example:
            >>> metrics = eval_step(state, strategy.put_eval_batch(batch))  # doctest: +SKIP
        """
        size = np.shape(jax.tree_util.tree_leaves(batch)[0])[0]
        if size % data_parallel_size(self.mesh):
            # A ragged last eval batch does not split evenly: every device evaluates it whole.
            replicated = NamedSharding(self.mesh, PartitionSpec())
            return jax.tree_util.tree_map(
                lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), batch
            )
        return shard_batch(batch, self.mesh, 0)

    def check_eval_batch(self, batch: Any) -> None:
        """Every leaf of an evaluation batch needs a batch axis (any size: one that does not
        split is evaluated replicated).

        Example:
            >>> strategy.check_eval_batch(next(data.eval_batches()))  # doctest: +SKIP
        """
        check_batch_divisible(batch, 1, 0, name="eval batch")

    def unreplicate(self, state: Any) -> Any:
        """`state` unchanged: the eval step runs on the sharded state."""
        return state

    def checkpoint_state(self, state: Any) -> Any:
        """`state` unchanged: Orbax saves the sharded arrays from every process."""
        return state
