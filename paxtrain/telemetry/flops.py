"""Model FLOPs of a training step: a model's own formula, or a count of the matmuls in its jaxpr.

A model (a recipe or a user's) gives its FLOPs by defining either method; the first found wins:

    def flops_per_token(self, seq_len: int) -> float: ...   # forward + backward, per token
    def flops_per_example(self, example_shape: tuple) -> float: ...  # ..., per example

Without one, `jaxpr_flops` counts the FLOPs of the matrix products (`dot_general`) and
convolutions in the jaxpr of the loss's value and gradient: the FLOPs the hardware's matrix
units run, which is what MFU divides by. XLA's `cost_analysis()` counts the body of a
`lax.scan` once, whatever its length, so a model with its layers under `lax.scan` would report
a fraction of its FLOPs; here each scan body counts `length` times. A `while` loop's body counts
once (its trip count is not known before it runs), a `cond` its most expensive branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr


def _dot_flops(eqn: Any) -> float:
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)


def _conv_flops(eqn: Any) -> float:
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    numbers = eqn.params["dimension_numbers"]
    # Each output element sums kernel-spatial x (input features / groups) products.
    out_feature_dim = numbers.rhs_spec[0]
    per_output = math.prod(kernel) / kernel[out_feature_dim]
    return 2.0 * math.prod(out) * per_output


_COUNTED = {"dot_general": _dot_flops, "conv_general_dilated": _conv_flops}


def _sub_jaxprs(value: Any) -> list[Jaxpr]:
    values = value if isinstance(value, (tuple, list)) else (value,)
    found = []
    for v in values:
        if isinstance(v, ClosedJaxpr):
            found.append(v.jaxpr)
        elif isinstance(v, Jaxpr):
            found.append(v)
    return found


def count_jaxpr_flops(jaxpr: Jaxpr | ClosedJaxpr) -> float:
    """FLOPs of the matrix products and convolutions of `jaxpr`, scan bodies times their length.

    Example:
        >>> import jax.numpy as jnp
        >>> def f(x, w):
        ...     return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=10)[0]
        >>> x, w = jnp.ones((4, 8)), jnp.ones((8, 8))
        >>> count_jaxpr_flops(jax.make_jaxpr(f)(x, w))  # 10 x (2 * 4 * 8 * 8)
        5120.0
    """
    if isinstance(jaxpr, ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _COUNTED:
            total += _COUNTED[name](eqn)
        elif name == "scan":
            total += eqn.params["length"] * count_jaxpr_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(count_jaxpr_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            total += count_jaxpr_flops(eqn.params["body_jaxpr"])
        else:
            for value in eqn.params.values():
                total += sum(count_jaxpr_flops(sub) for sub in _sub_jaxprs(value))
    return total


def step_flops(loss_fn: Callable[[Any, Any], Any], model: Any, batch: Any) -> float:
    """FLOPs of the loss's value and gradient for one batch (`jaxpr_flops` of its jaxpr);
    `model` and `batch` may be abstract (`jax.ShapeDtypeStruct` leaves): nothing runs.

    `loss_fn(model, batch[, key]) -> (loss, aux)`, as `Trainer.fit` takes it. Gradients are taken
    with respect to the model's parameters, as the training step does.

    Example:
        >>> import paxtrain.nn as nn
        >>> layer = nn.Linear(3, 2)
        >>> def loss_fn(model, x):
        ...     return (model(x) ** 2).sum(), None
        >>> # the forward matmul and the weights' gradient, 2 * 4*3*2 each (x needs no gradient)
        >>> step_flops(loss_fn, layer, jax.ShapeDtypeStruct((4, 3), "float32"))
        96.0
    """
    from paxtrain.train.gradients import takes_key

    key = (jax.random.PRNGKey(0),) if takes_key(loss_fn) else ()

    def value_and_grad(model: Any, batch: Any) -> Any:
        def loss_of_params(params: Any) -> Any:
            return loss_fn(model.update_parameters(params), batch, *key)

        return jax.value_and_grad(loss_of_params, has_aux=True)(model.parameters())

    # The whole model is traced (its states too: abstract ones cannot be indexed eagerly).
    return count_jaxpr_flops(jax.make_jaxpr(value_and_grad)(model, batch))


def formula_flops(model: Any, batch: Any, tokens_per_batch: int) -> float | None:
    """The FLOPs of one batch from the model's own formula (`flops_per_token` with the
    batch's sequence length, or `flops_per_example`), or None when it has neither or some of
    its parameters are frozen.

    Example:
        >>> formula_flops(nn.Linear(3, 2), None, 0) is None  # it has no formula
        True
    """
    from paxtrain.telemetry.parameters import count_parameters

    if not (hasattr(model, "flops_per_token") or hasattr(model, "flops_per_example")):
        return None
    if count_parameters(model, trainable_only=True) != count_parameters(model):
        # Formulas such as PaLM's count every weight's gradient; a frozen weight (fine-tuning,
        # LoRA) gets none, so the jaxpr's count is the one that matches what runs.
        return None
    examples = int(np.shape(jax.tree_util.tree_leaves(batch)[0])[0]) if batch is not None else 0
    if hasattr(model, "flops_per_token") and tokens_per_batch:
        return float(model.flops_per_token(tokens_per_batch // examples)) * tokens_per_batch
    if hasattr(model, "flops_per_example"):
        shape = tuple(np.shape(jax.tree_util.tree_leaves(batch)[0])[1:])
        return float(model.flops_per_example(shape)) * examples
    return None


def model_flops(
    loss_fn: Callable[[Any, Any], Any], model: Any, batch: Any, tokens_per_batch: int = 0
) -> tuple[float, str]:
    """FLOPs of one training batch and where they come from ("formula" or "jaxpr").

    Example:
        >>> import paxtrain.nn as nn
        >>> def loss_fn(model, x):
        ...     return (model(x) ** 2).sum(), None
        >>> model_flops(loss_fn, nn.Linear(3, 2), jax.ShapeDtypeStruct((4, 3), "float32"))
        (96.0, 'jaxpr')
    """
    formula = formula_flops(model, batch, tokens_per_batch)
    if formula is not None:
        return formula, "formula"
    return step_flops(loss_fn, model, batch), "jaxpr"


def palm_flops_per_token(
    non_embedding_params: int, num_layers: int, attention_dim: int, seq_len: int
) -> float:
    """PaLM's model FLOPs per token of a decoder-only transformer's training step (Chowdhery
    et al., 2022, appendix B): `6 * N + 12 * L * H * Q * T`, with N the parameters less the
    embedding tables (lookups, no matmul) but with the output head, L layers, H heads of size
    Q (`attention_dim`) and T positions. The attention term counts the whole T x T score matrix,
    as the model computes it (a causal mask hides half of it but does not skip it).

    Example:
        >>> palm_flops_per_token(1000, num_layers=2, attention_dim=16, seq_len=8)
        9072.0
    """
    return 6.0 * non_embedding_params + 12.0 * num_layers * attention_dim * seq_len


def abstract_batch(batch: Any) -> Any:
    """`batch` as `jax.ShapeDtypeStruct`s (what the FLOPs need of it); Python numbers too.

    Example:
        >>> abstract_batch({"x": np.zeros((2, 3), np.float32), "n": 1})["x"]
        ShapeDtypeStruct(shape=(2, 3), dtype=float32)
    """

    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        return jax.ShapeDtypeStruct(np.shape(x), dtype)

    return jax.tree_util.tree_map(leaf, batch)
