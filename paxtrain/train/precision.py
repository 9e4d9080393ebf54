"""`Trainer(precision=...)`: a short name or a mixed-precision policy string.

    >>> str(parse_precision("bfloat16"))
    'params=float32,compute=bfloat16,output=float32'
    >>> str(parse_precision("params=float32,compute=float16"))
    'params=float32,compute=float16,output=float32'
    >>> parse_precision("float32") is None  # no policy: everything in the parameters' dtype
    True

A policy computing in float16 trains with dynamic loss scaling (`needs_loss_scale`): float16's
range is too small for the gradients of an unscaled loss, bfloat16's is not.
"""

from __future__ import annotations

import jax.numpy as jnp

from paxtrain.core.mixed_precision import MpPolicy

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


def parse_precision(precision: str) -> MpPolicy | None:
    """The mixed-precision policy of a short name or a policy string; None for "float32".

    Raises ValueError naming the valid spellings.
    """
    spec = SHORT_NAMES.get(precision, precision)
    if spec is None:
        return None
    if "=" not in spec:
        reason = "not a short name, and a policy has `field=dtype` parts"
        raise ValueError(
            BAD_PRECISION_MSG.format(value=precision, reason=reason, names=list(SHORT_NAMES))
        )
    try:
        return MpPolicy.from_string(spec)
    except (TypeError, ValueError) as error:
        raise ValueError(
            BAD_PRECISION_MSG.format(
                value=precision, reason=str(error).rstrip("."), names=list(SHORT_NAMES)
            )
        ) from None


def needs_loss_scale(policy: MpPolicy | None) -> bool:
    """Whether a policy computes (or keeps parameters) in float16, which needs a loss scale.

    Example:
        >>> needs_loss_scale(parse_precision("float16")), needs_loss_scale(parse_precision("bfloat16"))
        (True, False)
    """
    return policy is not None and jnp.dtype(jnp.float16) in (
        policy.compute_dtype,
        policy.param_dtype,
    )
