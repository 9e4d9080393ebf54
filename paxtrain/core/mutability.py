"""Who may mutate a module, and when.

A module is mutable only while it carries the *token* of the innermost active mutable context
(a `pure` call or the module's own `__init__`) and the JAX trace is the one that was current when
that context opened. A module closed over by a nested `pure`, or by a function traced by `jax.jit`,
`jax.lax.scan`, `jax.vmap`, `jax.grad`... therefore refuses assignment instead of leaking tracers.

The trace is read with `jax.extend.core.get_opaque_trace_state`, JAX's public API for exactly this
check, so the rule survives JAX upgrades.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from jax.extend.core import get_opaque_trace_state


class MutationToken:
    """Marks the modules that one mutable context may change.

    A module stores the token of the context that made it mutable; it may be mutated only while
    that token is the innermost active one and the JAX trace has not changed since.
    """

    __slots__ = ("trace_state", "kind")

    def __init__(self, kind: str):
        self.trace_state = get_opaque_trace_state()
        self.kind = kind


_current_token: contextvars.ContextVar[MutationToken | None] = contextvars.ContextVar(
    "paxtrain_mutation_token", default=None
)


@contextlib.contextmanager
def mutable_context(kind: str) -> Iterator[MutationToken]:
    """Opens a mutable context; modules marked with the yielded token may be mutated inside it.

    Example:
        >>> with mutable_context("pure") as token:
        ...     assert current_token() is token
    """
    token = MutationToken(kind)
    reset = _current_token.set(token)
    try:
        yield token
    finally:
        _current_token.reset(reset)


def current_token() -> MutationToken | None:
    """The token of the innermost active mutable context, or None outside any."""
    return _current_token.get()


def mutation_error(token: MutationToken | None) -> str | None:
    """Why a module marked with `token` may not be mutated now, or None if it may.

    Returns "immutable" (never made mutable, or no longer), "transform" (a JAX transformation
    started since the module was made mutable) or "nested" (an inner `pure` call is active).
    """
    if token is None:
        return "immutable"
    if token.trace_state != get_opaque_trace_state():
        return "transform"
    if token is not _current_token.get():
        return "nested"
    return None
