"""The values a `Trainer` is built from besides its hooks: how each step runs (`StepSettings`)
and where it runs (`Layout`). Each checks its own rules when made."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from jax.sharding import Mesh

from paxtrain import parallel
from paxtrain.errors import ArgumentError
from paxtrain.train.hooks import check_at_least_one
from paxtrain.train.nonfinite import guard_kwargs
from paxtrain.train.precision import loss_scale_kwargs, parse_precision

NONFINITE_ACTIONS = ("skip", "stop", "rollback", "none")
NONFINITE_MSG = "on_nonfinite is {value!r}; choose one of {choices}."
EMA_DECAY_MSG = "ema_decay is {value}; it must be in [0, 1), e.g. ema_decay=0.999."


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """How each training step runs: the options `make_train_step` is built with.

    Args:
      steps_per_call: steps run per jitted call (a `lax.scan` over stacked batches).
      grad_accum_steps: micro-batches per step.
      precision: "float32"; "bfloat16" or "float16" for that compute with f32 parameters; or a
        policy string ("params=float32,compute=bfloat16,output=float32", see
        `train.precision`). Computing in float16 turns on dynamic loss scaling.
      ema_decay: keep an EMA of the parameters when set; evaluations then report its metrics
        too, as `eval/ema_*` (`eval/ema_loss`: a monitor for checkpoints or early stopping).
      on_nonfinite: the guard against steps with a NaN/Inf loss or gradient: on for "skip",
        "stop" and "rollback" (which also keeps what a rollback adjusts), off for "none".
        What such a step then does is the `NonFinitePolicy` hook's (`default_hooks`).
      grad_norm: log the gradients' global norm (`train/grad_norm`). The non-finite guard
        computes it anyway; with `on_nonfinite="none"`, False saves a pass over the gradients.

    Example:
        >>> StepSettings(steps_per_call=4).step_options()["steps_per_call"]
        4
        >>> StepSettings(precision="float16").step_options()["loss_scale"]
        'dynamic'
    """

    steps_per_call: int = 1
    grad_accum_steps: int = 1
    precision: str = "float32"
    ema_decay: float | None = None
    on_nonfinite: str = "skip"
    grad_norm: bool = True

    def __post_init__(self) -> None:
        check_at_least_one("steps_per_call", self.steps_per_call, 1)
        check_at_least_one("grad_accum_steps", self.grad_accum_steps, 1)
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            raise ArgumentError(
                "on_nonfinite",
                NONFINITE_MSG.format(value=self.on_nonfinite, choices=NONFINITE_ACTIONS),
            )
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ArgumentError("ema_decay", EMA_DECAY_MSG.format(value=self.ema_decay))
        try:
            parse_precision(self.precision)
        except ValueError as error:
            raise ArgumentError("precision", str(error)) from None

    @property
    def policy(self) -> Any:
        """The mixed-precision policy (`train.precision.parse_precision`), None for float32."""
        return parse_precision(self.precision)

    def step_options(self) -> dict[str, Any]:
        """The keyword arguments of `make_train_step` these settings give."""
        options = {
            "steps_per_call": self.steps_per_call,
            "grad_accum_steps": self.grad_accum_steps,
            **guard_kwargs(self.on_nonfinite),
            "ema_decay": self.ema_decay,
            "grad_norm": self.grad_norm,
        }
        return {**options, **loss_scale_kwargs(self.policy)}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the steps run: the devices, the parallel strategy and the tensor rules.

    Args:
      mesh: a `jax.sharding.Mesh`, or the sizes of `parallel.make_mesh`
        (`{"data": -1, "fsdp": 1, "tensor": 1}`); None puts every device on the data axis.
      strategy: "jit" (the state laid out on the mesh: data parallel, FSDP, tensor parallel)
        or "pmap" (data parallel with a replicated state); see `parallel.setup`.
      tensor_rules: the tensor-parallel rules of the "jit" strategy (`parallel.partition_spec`).

    Example:
        >>> Layout(mesh={"data": 1}).make_mesh().shape["data"]
        1
    """

    mesh: Mesh | Mapping[str, int] | None = None
    strategy: str = "jit"
    tensor_rules: Sequence[parallel.Rule] = parallel.DEFAULT_TENSOR_RULES

    def make_mesh(self) -> Mesh:
        """The mesh: as given, or made from the given sizes."""
        if isinstance(self.mesh, Mesh):
            return self.mesh
        return parallel.make_mesh(**(self.mesh or {}))


# The defaults of `Trainer(step=..., layout=...)`: frozen, so one value serves every trainer.
DEFAULT_STEP = StepSettings()
DEFAULT_LAYOUT = Layout()
