"""Deep stacks of identical blocks: parameters stacked over depth, `lax.scan`, rematerialization.

A model of N identical blocks written as a Python loop compiles N copies of the block, so its
compile time grows with depth. `ScanLayers` stacks the blocks' arrays on a leading axis and runs
one block under `jax.lax.scan`: XLA compiles the block once, whatever the depth. `remat` trades
compute for memory with `jax.checkpoint`: "full" keeps only each block's input for the backward
pass and recomputes the rest, "dots" also keeps the results of matrix multiplications (the
expensive part), "none" keeps everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.nn.sequential import Chainable

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

REMAT_MSG = "remat must be one of {choices}; got {got!r}."

NOT_IDENTICAL_MSG = """\
ScanLayers stacks identical blocks: every block must have the structure of the first (the same
modules, sizes, options and array shapes). Block {index} differs:
{first}
vs
{other}
Build the blocks from one constructor call repeated, or keep them in `nn.Sequential`."""


def call_block(block: pax.Module, x: Any, remat: str = "none") -> tuple[pax.Module, Any]:
    """`pax.purecall(block, x)`, under `jax.checkpoint` with the named policy unless "none".

    Returns the block (its states updated, e.g. dropout keys) and its output.

    Example:
        >>> block = nn.Linear(4, 4)
        >>> block, y = call_block(block, jnp.ones((2, 4)), remat="full")
        >>> y.shape
        (2, 4)
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(REMAT_MSG.format(choices=sorted(REMAT_POLICIES), got=remat))
    if remat == "none":
        return pax.purecall(block, x)
    return jax.checkpoint(pax.purecall, policy=REMAT_POLICIES[remat])(block, x)


def _assigns_states(block: pax.Module, x: Any) -> bool:
    """Whether calling `block` on `x` assigns any of its states (found by one abstract trace)."""
    assigned = []

    def probe(block: pax.Module, x: Any) -> int:
        new, _ = pax.purecall(block, x)
        pairs = zip(
            jax.tree_util.tree_leaves(pax.select_states(new)),
            jax.tree_util.tree_leaves(pax.select_states(block)),
            strict=True,
        )
        assigned.append(any(n is not o for n, o in pairs))
        return 0

    jax.eval_shape(probe, block, x)
    return assigned[0]


class ScanLayers(Chainable, pax.Module):
    """Identical blocks applied in order, as one block under `jax.lax.scan` over depth.

    The blocks' arrays are stacked on a new leading axis of size `num_layers` (the block in
    `self.block` holds them all), so compile time does not grow with depth; the output equals
    applying the blocks one after another.

    Args:
      blocks: the blocks, all with the same structure (built the same way).
      remat: "none", "dots" or "full": what `jax.checkpoint` keeps for the backward pass.

    Example:
        >>> layers = nn.ScanLayers([nn.Linear(4, 4) for _ in range(3)], remat="dots")
        >>> layers.block.weight.shape
        (3, 4, 4)
        >>> layers, y = pax.purecall(layers, jnp.ones((2, 4)))
        >>> y.shape
        (2, 4)
    """

    def __init__(self, blocks: Sequence[pax.Module], *, remat: str = "none"):
        super().__init__()
        if remat not in REMAT_POLICIES:
            raise ValueError(REMAT_MSG.format(choices=sorted(REMAT_POLICIES), got=remat))
        first = jax.tree_util.tree_structure(blocks[0])
        for index, block in enumerate(blocks[1:], start=1):
            other = jax.tree_util.tree_structure(block)
            if other != first:
                raise ValueError(NOT_IDENTICAL_MSG.format(index=index, first=first, other=other))
        self.num_layers, self.remat = len(blocks), remat
        self.block = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)

    def __call__(self, x: Any) -> Any:
        # Written back only when a block assigns states (dropout keys, statistics), so that
        # calling a stateless stack outside `pax.pure` works as calling the blocks would.
        keep = _assigns_states(jax.tree_util.tree_map(lambda a: a[0], self.block), x)

        def layer(carry: Any, block: pax.Module) -> tuple[Any, pax.Module | None]:
            block, y = call_block(block, carry, self.remat)
            return y, block if keep else None

        x, blocks = jax.lax.scan(layer, x, self.block)
        if keep:
            self.block = blocks
        return x

    def unstack(self) -> list[pax.Module]:
        """The blocks, one module each, as they were given (with their current arrays).

        Example:
            >>> blocks = nn.ScanLayers([nn.Linear(4, 4) for _ in range(3)]).unstack()
            >>> blocks[0].weight.shape
            (4, 4)
        """
        return [
            jax.tree_util.tree_map(lambda x, i=i: x[i], self.block) for i in range(self.num_layers)
        ]
