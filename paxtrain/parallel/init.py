"""Sharded initialization: the state built under `jax.jit` with the plan's output shardings, so
that each device only ever materializes its own shards (no device holds the whole state).

Modules draw their initial keys from pax's global key (`next_rng_key`); `seeded` runs a build
inside `rng_key_scope`, where that key may be traced, so the same constructors work eagerly and
traced and give the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from paxtrain.core.rng import rng_key_scope


def seeded(build: Callable[..., Any], seed: int) -> Callable[..., Any]:
    """`build` with pax's global key seeded with `seed` for its duration, traceable.

    Example:
        >>> import paxtrain.nn as nn
        >>> make = seeded(lambda: nn.Linear(3, 2), seed=0)
        >>> jax.eval_shape(make).weight.shape
        (3, 2)
    """

    def run(*args: Any) -> Any:
        with rng_key_scope(jax.random.PRNGKey(seed)):
            return build(*args)

    return run


def build_sharded(
    build: Callable[..., Any],
    seed: int,
    plan_for: Callable[[Any], Any],
    load: Callable[[Any], tuple[Any, ...]] | None = None,
) -> tuple[Any, Any]:
    """Builds a state laid out by its plan without ever holding it whole on one device.

    The state's shapes come from `jax.eval_shape` (nothing is allocated), `plan_for` plans its
    layout from them (e.g. `lambda abstract: parallel.setup(abstract, "jit", mesh)`), and the
    build then runs under `jax.jit(..., out_shardings=plan.state_shardings)`: every device
    computes only its shards. A strategy without `state_shardings` (the "pmap" one, whose state
    is replicated anyway) builds eagerly.

    Args:
      build: constructs the state (modules, optimizer state...); drawing keys from pax's
        global key is fine (see `seeded`).
      seed: the global key's seed during `build`.
      plan_for: the `ParallelStrategy` for the abstract state (`setup`).
      load: `load(plan)` reads arrays in the plan's layout (fine-tuning's parameters, see
        `laid_out`); `build(*load(plan))` then takes them, while `build()` gives the shapes.

    Returns:
      `(state, plan)`.

    Example:
        >>> state, plan = build_sharded(make_state, 0, lambda s: setup(s, "jit", mesh))  # doctest: +SKIP
    """
    run = seeded(build, seed)
    plan = plan_for(jax.eval_shape(run))
    inputs = () if load is None else load(plan)
    if plan.state_shardings is None:
        return run(*inputs), plan
    return jit_build(build, seed, plan, len(inputs))(*inputs), plan


def jit_build(build: Callable[..., Any], seed: int, plan: Any, inputs: int = 0) -> Any:
    """The jitted build of `build_sharded`: the state out in `plan`'s shardings, its `inputs`
    donated (read for the build only, their buffers may become the state's).

    Example:
        >>> compiled = jit_build(make_state, 0, plan).lower().compile()  # doctest: +SKIP
        >>> compiled.memory_analysis().temp_size_in_bytes  # doctest: +SKIP
    """
    return jax.jit(
        seeded(build, seed),
        out_shardings=plan.state_shardings,
        donate_argnums=tuple(range(inputs)),
    )


def laid_out(abstract: Any, shardings: Any | None) -> Any:
    """`abstract` with each leaf a `jax.ShapeDtypeStruct` carrying the matching leaf of
    `shardings` (matched in leaf order), or this process's first device without `shardings`.

    What a reader such as `finetune.load_parameters` needs to read arrays straight into the
    shards a sharded build will put them in.

    Example:
        >>> import paxtrain.nn as nn
        >>> one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        >>> layer = laid_out(jax.eval_shape(seeded(lambda: nn.Linear(3, 2), 0)), None)
        >>> layer.weight.sharding == one
        True
    """
    leaves, treedef = jax.tree_util.tree_flatten(abstract)
    if shardings is None:
        where = [jax.sharding.SingleDeviceSharding(jax.local_devices()[0])] * len(leaves)
    else:
        where = jax.tree_util.tree_leaves(shardings)
    structs = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, where)]
    return jax.tree_util.tree_unflatten(treedef, structs)


def arrays_by_leaf(tree: Any) -> dict[int, jax.Array]:
    """The leaves of `tree` that are arrays (not `jax.ShapeDtypeStruct`s), by leaf index.

    Example:
        >>> arrays_by_leaf([jax.ShapeDtypeStruct((2,), "float32"), jax.numpy.ones(2)])
        {1: Array([1., 1.], dtype=float32)}
    """
    leaves = jax.tree_util.tree_leaves(tree)
    return {i: x for i, x in enumerate(leaves) if not isinstance(x, jax.ShapeDtypeStruct)}


def with_leaves(tree: Any, arrays: Mapping[int, Any]) -> Any:
    """`tree` with the leaves of the indices in `arrays` replaced (see `arrays_by_leaf`).

    Example:
        >>> with_leaves([1, 2, 3], {1: 20})
        [1, 20, 3]
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [arrays.get(i, x) for i, x in enumerate(leaves)])
