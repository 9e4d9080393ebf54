"""`Trainer(precision=...)`: a short name or a mixed-precision policy string.

    >>> str(parse_precision("bfloat16"))
    'params=float32,compute=bfloat16,output=float32'
    >>> str(parse_precision("params=float32,compute=float16"))
    'params=float32,compute=float16,output=float32'
    >>> parse_precision("float32") is None  # no policy: everything in the parameters' dtype
    True

A policy computing in float16 trains with dynamic loss scaling (`dynamic_loss_scale`, asked for
by `loss_scale_kwargs`): float16's range is too small for the gradients of an unscaled loss,
bfloat16's is not. The loss scale's option owns its state (`LossScaleState`), its update, its
metric and the scaling of the loss and the gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.core.mixed_precision import MpPolicy
from paxtrain.errors import ArgumentError
from paxtrain.train.gradients import Batch, Differentiate, Metrics
from paxtrain.train.nonfinite import is_finite
from paxtrain.train.options import StepFn, StepOption
from paxtrain.train.state import TrainState

# The short names, as the policies they stand for; "float32" applies none.
SHORT_NAMES = {
    "float32": None,
    "bfloat16": "params=float32,compute=bfloat16,output=float32",
    "float16": "params=float32,compute=float16,output=float32",
}

BAD_PRECISION_MSG = (
    "precision {value!r} is not a precision: {reason}. Use one of {names}, or a policy such as "
    "'params=float32,compute=bfloat16,output=float32' (quoted on the command line: "
    "'trainer.precision=\"params=float32,compute=bfloat16\"')."
)


NOT_FLOAT_MSG = "{field}={dtype} is not a floating-point dtype (float32, bfloat16, float16)"


FLOAT16_PARAMS_MSG = (
    "params=float16 keeps no float32 master copy of the weights: an update smaller than "
    "float16's resolution (a thousandth of the weight) is lost, and the loss scale's skipped "
    "steps cannot recover it. Keep float32 parameters and compute in float16 (`float16`, the "
    "policy 'params=float32,compute=float16'), or use bfloat16"
)


def parse_precision(precision: str) -> MpPolicy | None:
    """The mixed-precision policy of a short name or a policy string; None for "float32".

    Every dtype of a policy is floating (`compute=int8` would train a model that cannot
    learn); parameters are not float16 (no master weights: `FLOAT16_PARAMS_MSG`).
    Raises ValueError naming the valid spellings.

    Example:
        >>> parse_precision("params=float32,compute=int8")
        Traceback (most recent call last):
        ValueError: precision 'params=float32,compute=int8' is not a precision: compute=int8 is not a floating-point dtype ...
    """
    spec = SHORT_NAMES.get(precision, precision)
    if spec is None:
        return None

    def refused(reason: str) -> ValueError:
        return ValueError(
            BAD_PRECISION_MSG.format(value=precision, reason=reason, names=list(SHORT_NAMES))
        )

    if "=" not in spec:
        raise refused("not a short name, and a policy has `field=dtype` parts")
    try:
        policy = MpPolicy.from_string(spec)
    except (TypeError, ValueError) as error:
        raise refused(str(error).rstrip(".")) from None
    fields = {"params": policy.param_dtype, "compute": policy.compute_dtype,
              "output": policy.output_dtype}  # fmt: skip
    for field, dtype in fields.items():
        if not jnp.issubdtype(dtype, jnp.floating):
            raise refused(NOT_FLOAT_MSG.format(field=field, dtype=dtype.name))
    if policy.param_dtype == jnp.float16:
        raise refused(FLOAT16_PARAMS_MSG)
    return policy


def needs_loss_scale(policy: MpPolicy | None) -> bool:
    """Whether a policy computes in float16, which needs a loss scale.

    Example:
        >>> needs_loss_scale(parse_precision("float16")), needs_loss_scale(parse_precision("bfloat16"))
        (True, False)
    """
    return policy is not None and policy.compute_dtype == jnp.float16


UNSUPPORTED_ON_BACKEND_MSG = (
    "precision is '{policy}', but this model's computation does not run in {dtype} on the "
    "{backend} backend ({error}). Compute in bfloat16 (precision='bfloat16') or float32 here, or "
    "train with float16 on a GPU."
)


def check_backend(policy: MpPolicy | None, model: Any, batch: Batch, loss_fn: Callable) -> None:
    """Raises `ArgumentError("precision", ...)` when `loss_fn(model, batch)` under a float16
    policy cannot be lowered for the default backend, though it can in float32: on a CPU, XLA
    has no float16 dot with a float32 result, which attention uses. Checked at start-up, by
    lowering the forward pass (nothing is compiled), so the run fails before its first step
    and leaves no run directory. Other policies are not checked: bfloat16 runs everywhere.

    Args:
      policy: the run's policy (`parse_precision`), None for float32.
      model: the model, its arrays concrete or abstract (`jax.ShapeDtypeStruct`).
      batch: a training batch.
      loss_fn: `loss_fn(model, batch) -> (loss, aux)`, as `Trainer.fit` takes it.

    Example:
        >>> check_backend(parse_precision("float16"), pax.nn.Linear(2, 1),
        ...               jnp.ones((4, 2)), lambda m, x: (m(x).sum(), None))
    """
    if policy is None or policy.compute_dtype != jnp.float16:
        return

    def lower(with_policy: bool) -> None:
        def forward(model: Any, batch: Batch) -> jax.Array:
            return loss_fn(pax.apply_mp_policy(model, policy) if with_policy else model, batch)[0]

        jax.jit(forward).lower(model, batch)

    try:
        lower(with_policy=True)
    except Exception as error:  # any: the float32 lowering tells the policy's from the model's
        try:
            lower(with_policy=False)
        except Exception:  # fails in float32 too: the model's own error, which the first step
            return  # reports as it is
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArgumentError(
            "precision",
            UNSUPPORTED_ON_BACKEND_MSG.format(
                policy=str(policy), dtype="float16", backend=jax.default_backend(), error=reason
            ),
        ) from None


def loss_scale_kwargs(policy: MpPolicy | None) -> dict[str, Any]:
    """The `make_train_step` arguments that training under `policy` needs: a dynamic loss scale
    for float16.

    Example:
        >>> loss_scale_kwargs(parse_precision("float16"))
        {'loss_scale': 'dynamic'}
        >>> loss_scale_kwargs(parse_precision("bfloat16"))
        {}
    """
    return {"loss_scale": "dynamic"} if needs_loss_scale(policy) else {}


class LossScaleState(NamedTuple):
    """The state of `dynamic_loss_scale`: the scale, and the finite steps in a row since it last
    changed."""

    loss_scale: jax.Array
    good_steps: jax.Array


LOSS_SCALE = "dynamic_loss_scale"


def dynamic_loss_scale(
    initial: float = 2.0**15, period: int = 2000, factor: float = 2.0
) -> StepOption:
    """Dynamic loss scaling for float16 compute.

    The loss is multiplied by the scale before differentiation and the gradients are divided by
    it after, so float16 gradients do not underflow while the update stays the same. A
    non-finite step divides the scale by `factor` (not below 1); `period` finite steps in a row
    multiply it by `factor`. It must wrap `skip_nonfinite`, so the overflowing step is also
    skipped: `make_train_step(loss_scale=...)` arranges both. The scale is reported as the
    metric `loss_scale`.

    Args:
      initial: the starting scale.
      period: finite steps in a row before the scale grows.
      factor: the growth and shrink factor.

    Example:
        >>> step = make_train_step(loss_fn, loss_scale="dynamic")  # doctest: +SKIP
        >>> step = make_train_step(loss_fn, loss_scale=dynamic_loss_scale(period=500))  # doctest: +SKIP
    """

    def init(state: TrainState) -> LossScaleState:
        return LossScaleState(jnp.array(initial, jnp.float32), jnp.array(0, jnp.int32))

    def wrap_grad(differentiate: Differentiate) -> Differentiate:
        def scaled(state: TrainState, objective: Callable, model: pax.Module):
            scale = state.extras[LOSS_SCALE].loss_scale

            def scaled_objective(model: pax.Module):
                value, aux = objective(model)
                return value * scale, aux

            (value, aux), grads = differentiate(state, scaled_objective, model)
            return (value, aux), jax.tree_util.tree_map(lambda g: g / scale, grads)

        return scaled

    def wrap(step: StepFn) -> StepFn:
        def updated(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
            new, metrics = step(state, batch)
            finite = is_finite(metrics)
            scale, good = state.extras[LOSS_SCALE]
            good = good + 1
            grow = finite & (good >= period)
            scale = jnp.where(
                finite, jnp.where(grow, scale * factor, scale), jnp.maximum(scale / factor, 1.0)
            )
            good = jnp.where(finite & ~grow, good, 0)
            new = new.with_extras(**{LOSS_SCALE: LossScaleState(scale, good)})
            return new, {**metrics, "loss_scale": scale}

        return updated

    return StepOption(LOSS_SCALE, init, wrap, wrap_grad=wrap_grad)


def loss_scale(state: TrainState) -> jax.Array | None:
    """The loss scale `state` trains with; None without dynamic loss scaling.

    Example:
        >>> loss_scale(TrainState.create(pax.nn.Linear(2, 1), optax.sgd(0.1))) is None
        True
    """
    return state.extras[LOSS_SCALE].loss_scale if LOSS_SCALE in state.extras else None
