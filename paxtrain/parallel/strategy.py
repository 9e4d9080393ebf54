"""`ParallelStrategy`: what a way of running the step on several devices must provide.

One subclass per strategy, each in its own file (`jit_strategy.py`, `pmap_strategy.py`), and
one entry for it in `plan.STRATEGIES`, where `setup` finds it by name (Lightning's `Strategy`).
The trainer and `make_train_step` talk to a strategy only through these methods, so a new
strategy changes nothing outside its file and that entry.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
from jax.sharding import Mesh

from paxtrain.parallel.batch import ProcessRows, check_batch_divisible
from paxtrain.parallel.mesh import data_parallel_size
from paxtrain.parallel.sharding import Rule


class ParallelStrategy(abc.ABC):
    """Where the state and the batches live, and how the step compiles for it.

    Made by `setup`. `step_kwargs` go to `make_train_step` (the strategy compiles the step and
    may reduce the gradients inside it), `put_batch` places each batch (a `Prefetcher`'s
    `put`), `place` lays out a state: a fresh one, and one changed outside the step with new
    arrays (a rollback's extras), which laid out otherwise would make the step compile again.
    `unreplicate` gives the state as the eval step takes it, `checkpoint_state` as checkpoints
    save and restore it.

    Attributes:
      name: the strategy's name in `plan.STRATEGIES` and in messages.
      description: what it does, for the message naming the strategies to choose from.
      mesh: the devices it runs on.
      batch_axis: 0, or 1 when batches are stacked for `steps_per_call`.
      state_shardings: the state's shardings, which a build under `jax.jit` produces it in
        (`build_sharded`); None where the state is built eagerly and then placed.

    Example:
        >>> from paxtrain import parallel
        >>> strategy = parallel.setup({"w": np.zeros((4, 3))}, "jit")
        >>> strategy.place({"w": np.zeros((4, 3))})["w"].sharding == strategy.state_shardings["w"]
        True
    """

    name: ClassVar[str]
    description: ClassVar[str]
    mesh: Mesh
    batch_axis: int
    state_shardings: Any

    @classmethod
    @abc.abstractmethod
    def create(
        cls,
        state: Any,
        mesh: Mesh,
        *,
        batch_axis: int,
        tensor_rules: Sequence[Rule],
        fsdp_min_size: int,
    ) -> ParallelStrategy:
        """The strategy for `state` on `mesh` (see `setup`, which calls it); raises a
        `LayoutError` for a mesh or rules it cannot run."""

    @property
    def step_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `make_train_step` for this strategy.

        Example:
            >>> from paxtrain import parallel
            >>> sorted(parallel.setup({"w": np.zeros(3)}, "jit").step_kwargs)
            ['compile_step', 'reduce_gradients']
        """
        return {"compile_step": self.compile_step, "reduce_gradients": self.reduce_gradients}

    @abc.abstractmethod
    def compile_step(
        self, step: Callable, *, donate: bool = True, flat_state: bool = False
    ) -> Callable:
        """`step(state, batch) -> (state, metrics)` compiled to run on the strategy's devices;
        `donate` donates the state's buffers; with `flat_state` the state is its list of
        leaves (`TrainStep.flat`)."""

    def reduce_gradients(self, grad_fn: Callable) -> Callable:
        """`grad_fn` (a `GradFn`) with whatever the strategy must do to the gradients of a
        device's part of the batch inside the compiled step; unchanged by default (`jax.jit`
        partitions the whole batch's gradients itself).

        Example:
            >>> fn = lambda state, batch, key: None
            >>> from paxtrain import parallel
            >>> parallel.setup({"w": np.zeros(3)}, "jit").reduce_gradients(fn) is fn
            True
        """
        return grad_fn

    def compile_eval_step(self, eval_step: Callable) -> Callable:
        """`eval_step(state, batch) -> metrics` compiled for a state from `unreplicate` and a
        batch from `put_eval_batch`: `jax.jit`, which runs where its inputs are.

        Example:
            >>> from paxtrain import parallel
            >>> strategy = parallel.setup({"w": np.zeros(3)}, "jit")
            >>> float(strategy.compile_eval_step(lambda s, b: s["w"].sum() + b)({"w": np.ones(3)}, 1))
            4.0
        """
        return jax.jit(eval_step)

    @abc.abstractmethod
    def place(self, state: Any) -> Any:
        """`state` laid out for the compiled step."""

    @abc.abstractmethod
    def put_batch(self, batch: Any) -> Any:
        """One global batch (the same on every process) placed for the compiled step."""

    @abc.abstractmethod
    def process_rows(self, source: Any, global_batch_size: int) -> ProcessRows:
        """A view of `source` that reads only this process's rows of each training batch and
        places them (see `ProcessRows`); the trainer's prefetcher reads through it."""

    @abc.abstractmethod
    def put_eval_batch(self, batch: Any) -> Any:
        """One evaluation batch (batch axis 0) placed for the eval step on `unreplicate(state)`."""

    @abc.abstractmethod
    def check_eval_batch(self, batch: Any) -> None:
        """Raises a `LayoutError` unless `put_eval_batch` can place `batch`; before training,
        so it fails at once rather than at the first evaluation."""

    @abc.abstractmethod
    def unreplicate(self, state: Any) -> Any:
        """A placed state as the eval step takes it."""

    @abc.abstractmethod
    def checkpoint_state(self, state: Any) -> Any:
        """A placed state laid out as checkpoints save and restore it (Orbax writes it from
        every process)."""

    def check_batch(self, batch: Any) -> None:
        """Raises a `LayoutError` unless one batch (batch axis 0) splits evenly over the
        data-parallel devices; before training, so a bad batch size fails at once.

        Example:
            >>> from paxtrain import parallel
            >>> parallel.setup({"w": np.zeros(3)}, "jit").check_batch({"x": np.zeros((8, 2))})
        """
        parts = data_parallel_size(self.mesh)
        check_batch_divisible(batch, parts, 0, f"{self.name} over {parts} devices")
