"""Sharded initialization: the state built under `jax.jit` with the plan's output shardings, so
that each device only ever materializes its own shards (no device holds the whole state).

Modules draw their initial keys from pax's global key (`next_rng_key`); `seeded` runs a build
inside `rng_key_scope`, where that key may be traced, so the same constructors work eagerly and
traced and give the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from paxtrain.core.rng import rng_key_scope


def seeded(build: Callable[[], Any], seed: int) -> Callable[[], Any]:
    """`build` with pax's global key seeded with `seed` for its duration, traceable.

    Example:
        >>> import paxtrain.nn as nn
        >>> make = seeded(lambda: nn.Linear(3, 2), seed=0)
        >>> jax.eval_shape(make).weight.shape
        (3, 2)
    """

    def run() -> Any:
        with rng_key_scope(jax.random.PRNGKey(seed)):
            return build()

    return run


def build_sharded(
    build: Callable[[], Any], seed: int, plan_for: Callable[[Any], Any]
) -> tuple[Any, Any]:
    """Builds a state laid out by its plan without ever holding it whole on one device.

    The state's shapes come from `jax.eval_shape` (nothing is allocated), `plan_for` plans its
    layout from them (e.g. `lambda abstract: parallel.setup(abstract, "jit", mesh)`), and the
    build then runs under `jax.jit(..., out_shardings=plan.state_shardings)`: every device
    computes only its shards. The "pmap" strategy, whose state is replicated anyway, builds
    eagerly.

    Args:
      build: constructs the state (modules, optimizer state...); drawing keys from pax's
        global key is fine (see `seeded`).
      seed: the global key's seed during `build`.
      plan_for: the `ParallelPlan` for the abstract state.

    Returns:
      `(state, plan)`.

    Example:
        >>> state, plan = build_sharded(make_state, 0, lambda s: setup(s, "jit", mesh))  # doctest: +SKIP
    """
    run = seeded(build, seed)
    plan = plan_for(jax.eval_shape(run))
    if plan.state_shardings is None:
        return run(), plan
    return jax.jit(run, out_shardings=plan.state_shardings)(), plan
