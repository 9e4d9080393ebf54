"""`Trainer.summary` and `paxtrain summary`: what a run trains and what it needs, before it runs.

Nothing of the state is allocated: its shapes come from `jax.eval_shape`, its layout from the
trainer's strategy (`parallel.setup` on the abstract state), the bytes each device holds from
each leaf's `sharding.shard_shape`, and the step's own memory from the compiled step's
`memory_analysis()` (the step is lowered with abstract state leaves and compiled, not run).
The memory a device needs is the compiled step's: its arguments (the state and the batch),
its outputs not written over donated arguments, and its temporaries (gradients, activations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from paxtrain import parallel
from paxtrain.telemetry.flops import abstract_batch, model_flops
from paxtrain.telemetry.memory import GIB, bytes_per_device, compiled_memory, device_memory_limit
from paxtrain.telemetry.parameters import count_parameters, parameter_tree

FITS_MSG = "fits: {needed:.2f} GiB needed per device, {available:.2f} GiB available ({source})"
WONT_FIT_MSG = (
    "will not fit: {needed:.2f} GiB needed per device, {available:.2f} available ({source}); "
    "try mesh.fsdp={fsdp} or model.remat=full"
)


@dataclasses.dataclass(frozen=True)
class Summary:
    """What `Trainer.summary` finds; `str(summary)` is what `paxtrain summary` prints.

    Attributes:
      model: the model's class name.
      parameters: parameters in total, and `trainable` of them (fewer when some are frozen:
        fine-tuning, LoRA).
      tree: the module tree with parameter counts (`parameter_tree`).
      layout: the strategy and mesh, in words.
      state_bytes: bytes per device of the state's parts: "parameters", "optimizer state",
        "gradients" (as many as the parameters, in the step's temporaries), "other state".
      step_bytes: the compiled step's `arguments`, `outputs`, `temporaries` per device.
      flops_per_batch: model FLOPs (forward and backward) of one batch, and their `flops_source`
        ("formula": the model's, "jaxpr": counted).
      examples_per_batch, tokens_per_batch: the batch's size (tokens: 0 when not counted).
      available_bytes, available_source: one device's memory and where it was read.
      fsdp_hint: the `mesh.fsdp` to suggest when it does not fit.
    """

    model: str
    parameters: int
    trainable: int
    tree: tuple[str, ...]
    layout: str
    state_bytes: dict[str, int]
    step_bytes: dict[str, int]
    flops_per_batch: float
    flops_source: str
    examples_per_batch: int
    tokens_per_batch: int
    available_bytes: int
    available_source: str
    fsdp_hint: int

    @property
    def needed_bytes(self) -> int:
        """Bytes one device needs for a step: the compiled step's arguments, outputs and
        temporaries."""
        return sum(self.step_bytes.values())

    @property
    def fits(self) -> bool:
        """Whether `needed_bytes` fit in `available_bytes`."""
        return self.needed_bytes <= self.available_bytes

    @property
    def flops_per_token(self) -> float | None:
        """Model FLOPs per token (None when the data counts no tokens)."""
        return self.flops_per_batch / self.tokens_per_batch if self.tokens_per_batch else None

    @property
    def flops_per_example(self) -> float:
        """Model FLOPs per example."""
        return self.flops_per_batch / self.examples_per_batch

    @property
    def verdict(self) -> str:
        """ "fits: ..." or "will not fit: N GiB needed per device, M available; try ..."."""
        values = {
            "needed": self.needed_bytes / GIB,
            "available": self.available_bytes / GIB,
            "source": self.available_source,
            "fsdp": self.fsdp_hint,
        }
        return (FITS_MSG if self.fits else WONT_FIT_MSG).format(**values)

    def __str__(self) -> str:
        mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
        per_token = (
            f"{self.flops_per_token:.4g} per token, " if self.flops_per_token is not None else ""
        )
        lines = [
            f"{self.model}: {self.parameters:,} parameters"
            + (f", {self.trainable:,} trainable" if self.trainable != self.parameters else ""),
            *self.tree,
            f"layout: {self.layout}",
            "state per device: "
            + ", ".join(f"{name} {mib(n)}" for name, n in self.state_bytes.items()),
            "compiled step per device: "
            + ", ".join(f"{name} {mib(n)}" for name, n in self.step_bytes.items()),
            f"model FLOPs (forward + backward): {per_token}{self.flops_per_example:.4g} per "
            f"example ({self.flops_source})",
            f"memory: {self.verdict}",
        ]
        return "\n".join(lines)


def _placed_abstract(plan: Any, abstract: Any) -> Any:
    """The abstract state as the compiled step takes it: with the plan's shardings, or, for
    a strategy without (pmap: one copy per local device), with a leading device axis."""
    if plan.state_shardings is not None:
        return parallel.laid_out(abstract, plan.state_shardings)
    devices = jax.local_device_count()
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((devices, *x.shape), x.dtype), abstract
    )


def _fsdp_hint(mesh: Any, state_bytes: dict[str, int], needed: int, available: int) -> int:
    """The smallest `mesh.fsdp` (doubling the current one, at most every device) whose split
    of the parameters, their gradients and the optimizer state brings `needed` under
    `available`; every device when none does."""
    fsdp, devices = mesh.shape[parallel.FSDP], mesh.size
    splittable = state_bytes["parameters"] + state_bytes["gradients"]
    splittable += state_bytes["optimizer state"]
    candidate = fsdp * 2
    while candidate < devices:
        if needed - splittable * (1 - fsdp / candidate) <= available:
            return candidate
        candidate *= 2
    return devices


def summarize(
    state: Any,
    plan: Any,
    train_step: Any,
    data: Any,
    loss_fn: Callable,
    steps_per_call: int = 1,
) -> Summary:
    """The `Summary` of training with `train_step` (a `TrainStep` compiled by `plan`, the
    layout's strategy) from the abstract `TrainState` `state` on `data` (see `Trainer.summary`,
    which makes them). The step is lowered with abstract state leaves and compiled, not run.

    Example:
        >>> print(summarize(abstract_state, plan, train_step, data, model_loss))  # doctest: +SKIP
    """
    mesh = plan.mesh
    laid_out = parallel.laid_out(state, plan.state_shardings)
    params = bytes_per_device(laid_out.model.parameters())
    optimizer_bytes = bytes_per_device(laid_out.optimizer)
    state_bytes = {
        "parameters": params,
        "optimizer state": optimizer_bytes,
        "gradients": params,
        "other state": bytes_per_device(laid_out) - params - optimizer_bytes,
    }

    batch = data.train_batch(0)
    stacked = batch
    if steps_per_call > 1:
        stacked = jax.tree_util.tree_map(lambda x: np.stack([x] * steps_per_call), batch)
    leaves, treedef = jax.tree_util.tree_flatten(_placed_abstract(plan, state))
    compiled = train_step.flat(treedef).lower(leaves, plan.put_batch(stacked)).compile()
    step_bytes = compiled_memory(compiled)

    tokens = int(data.info.get("tokens_per_batch", 0))
    shapes = abstract_batch(batch)
    flops, source = model_flops(loss_fn, state.model, shapes, tokens)
    available, where = device_memory_limit(mesh.devices.flat[0])
    needed = sum(step_bytes.values())
    devices = mesh.size
    sizes = " ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
    return Summary(
        model=type(state.model).__name__,
        parameters=count_parameters(state.model),
        trainable=count_parameters(state.model, trainable_only=True),
        tree=tuple(parameter_tree(state.model)),
        layout=f"{plan.name}, mesh {sizes} ({devices} device{'s' if devices > 1 else ''})",
        state_bytes=state_bytes,
        step_bytes=step_bytes,
        flops_per_batch=flops,
        flops_source=source,
        examples_per_batch=int(np.shape(jax.tree_util.tree_leaves(batch)[0])[0]),
        tokens_per_batch=tokens,
        available_bytes=available,
        available_source=where,
        fsdp_hint=_fsdp_hint(mesh, state_bytes, needed, available),
    )
