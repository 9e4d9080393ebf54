"""LoRA: low-rank adapters beside frozen `Linear` weights (Hu et al. 2021, as peft does it).

`apply_lora` freezes a model and replaces the `Linear`s whose paths match a regex by
`LoRALinear`s: the layer's weight and bias stay where they were (`layers.0.attn.q_proj.weight`, so `init_from` and the
tensor rules find them unchanged) as frozen parameters, and a trainable `LoRAAdapter` beside
them (`layers.0.attn.q_proj.adapter.lora_a`, `.lora_b`) adds `dropout(x) @ A.T @ B.T * alpha/rank`.
`B` starts at zero, so the adapted model computes exactly what the base did until it trains.
`merge_lora` folds the adapters back into plain `Linear`s.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    >>> adapted = apply_lora(model, rank=2, alpha=4.0, paths=[r"layers\\.0$"])
    >>> [type(layer).__name__ for layer in adapted.layers]
    ['LoRALinear', 'Linear']
    >>> merged = merge_lora(adapted)
    >>> bool(jnp.array_equal(merged(jnp.ones((1, 8))), model(jnp.ones((1, 8)))))
    True

Layers stacked by `ScanLayers` (weights [depth, in, out]) get stacked adapters
([depth, rank, in] and [depth, out, rank]), one independent adapter per layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp

import paxtrain as pax
from paxtrain.core.module import MODULE, child_fields, rebuild
from paxtrain.core.tree import path_search, path_str
from paxtrain.errors import ArgumentError
from paxtrain.nn.dropout import Dropout
from paxtrain.nn.initializers import compiled, zeros
from paxtrain.nn.linear import Linear
from paxtrain.nn.sequential import Chainable

M = TypeVar("M", bound=pax.Module)

RANK_MSG = """\
LoRA rank={rank} must be at least 1 (the adapters' inner width); e.g. rank=8."""

RANK_TOO_LARGE_MSG = """\
LoRA rank={rank} must be at most min(in, out) of every adapted layer: `{path}` is \
[{in_dim}, {out_dim}], so its rank is at most {limit}. Choose a rank up to {limit}, or leave \
that layer out of `paths`."""

ALPHA_MSG = """\
LoRA alpha={alpha} must be positive: the adapters' update is scaled by alpha/rank. peft's \
usual choice is alpha = 2 * rank, e.g. alpha=16 for rank=8."""

DROPOUT_MSG = """\
LoRA dropout={dropout} must satisfy 0 <= dropout < 1 (the fraction of the adapter's inputs \
zeroed in training); e.g. dropout=0.05, or dropout=0.0 for none."""

NO_PATHS_MSG = """\
LoRA `paths` is empty, so it selects no layer: give regexes on the paths of the `Linear`s to \
adapt, e.g. {example!r}. The model's `Linear`s are: {linears}."""

NO_MATCH_MSG = """\
LoRA `paths` pattern {pattern!r} matches no `Linear` of the model. The model's `Linear`s are: \
{linears}. Write regexes on those paths in `paths`, e.g. {example!r}."""

# Messages show this many of a model's `Linear` paths (a deep model has hundreds).
SHOWN_PATHS = 8


def _kaiming_uniform(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """peft's initialization of `lora_A`: torch's `kaiming_uniform_(a=sqrt(5))` on a [rank, in]
    matrix, which is uniform on +-1/sqrt(in)."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


# Compiled on its own, so that an eager build and the sharded (jitted) one draw the same bits.
kaiming_uniform = compiled(_kaiming_uniform)


class LoRAAdapter(pax.Module):
    """The trainable part of a `LoRALinear`: `dropout(x) @ lora_a.T @ lora_b.T * scale`.

    `lora_a` is [rank, in] (peft's `lora_A`, uniform on +-1/sqrt(in)), `lora_b` [out, rank]
    (zeros), `scale = alpha / rank`. Leading `stack` axes give one adapter per layer of a
    `ScanLayers` stack. Dropout acts in training mode only (`.eval()`: deterministic).

    Example:
        >>> adapter = LoRAAdapter(4, 3, rank=2, alpha=4.0, rng_key=jax.random.PRNGKey(0))
        >>> adapter.lora_a.shape, adapter.lora_b.shape, adapter.scale
        ((2, 4), (3, 2), 2.0)
        >>> adapter(jnp.ones((5, 4))).tolist()[0]  # B is zero: no change yet
        [0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        stack: tuple[int, ...] = (),
        rng_key: jax.Array | None = None,
    ):
        super().__init__()
        a_key, dropout_key = jax.random.split(pax.next_rng_key() if rng_key is None else rng_key)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.register_parameter(
            "lora_a", kaiming_uniform(a_key, (*stack, rank, in_dim), jnp.float32)
        )
        self.register_parameter("lora_b", zeros(None, (*stack, out_dim, rank), jnp.float32))
        # One key per stacked layer: a scanned layer sees its own [2] key.
        keys = jax.random.split(dropout_key, math.prod(stack)).reshape(*stack, -1)
        self.dropout = Dropout(dropout, rng_key=keys if stack else dropout_key)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.dropout(x)
        return (h @ self.lora_a.T) @ self.lora_b.T * self.scale

    def delta(self) -> jax.Array:
        """The update of the weight [..., in, out] the adapter stands for: `(B @ A).T * scale`.

        Example:
            >>> adapter = LoRAAdapter(4, 3, rank=2, alpha=4.0, rng_key=jax.random.PRNGKey(0))
            >>> adapter.delta().shape, float(abs(adapter.delta()).max())  # B is still zero
            ((4, 3), 0.0)
        """
        ba = jnp.matmul(self.lora_b, self.lora_a, precision=jax.lax.Precision.HIGHEST)
        return jnp.swapaxes(ba, -1, -2) * self.scale


class LoRALinear(Chainable, pax.Module):
    """A `Linear` whose `weight` and `bias` are frozen, plus a trainable `LoRAAdapter`:
    `y = x @ weight + bias + adapter(x)`. Build it with `lora_linear` (or `apply_lora`), which
    freezes the base; this constructor alone leaves it trainable.

    Example:
        >>> layer = lora_linear(nn.Linear(4, 3), rank=2, alpha=4.0)
        >>> jax.tree_util.tree_leaves(pax.select_parameters(layer))[0].shape  # lora_a only...
        (2, 4)
        >>> len(jax.tree_util.tree_leaves(pax.select_parameters(layer)))  # ...and lora_b
        2
    """

    def __init__(
        self,
        linear: Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        rng_key: jax.Array | None = None,
    ):
        super().__init__(name=linear.name)
        self.in_dim, self.out_dim, self.with_bias = linear.in_dim, linear.out_dim, linear.with_bias
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        self.adapter = LoRAAdapter(
            self.in_dim, self.out_dim, rank, alpha, dropout,
            stack=linear.weight.shape[:-2], rng_key=rng_key,
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.weight + self.adapter(x)
        return y if self.bias is None else y + self.bias

    def merged(self) -> Linear:
        """The plain `Linear` with the adapter folded in: `weight + (B @ A).T * alpha/rank`.

        Example:
            >>> layer = lora_linear(nn.Linear(4, 3), rank=2, alpha=4.0)
            >>> bool(jnp.array_equal(layer.merged().weight, layer.weight))  # B is still zero
            True
        """
        weight = self.weight + self.adapter.delta().astype(self.weight.dtype)
        bias = self.bias
        return Linear(
            self.in_dim, self.out_dim, self.with_bias,
            w_init=lambda *_: weight, b_init=lambda *_: bias,
            rng_key=jax.random.PRNGKey(0),  # unused: the initializers return the arrays
            name=self.name,
        )  # fmt: skip


def _check_hyperparameters(rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ArgumentError("rank", RANK_MSG.format(rank=rank))
    if not alpha > 0:
        raise ArgumentError("alpha", ALPHA_MSG.format(alpha=alpha))
    if not 0 <= dropout < 1:
        raise ArgumentError("dropout", DROPOUT_MSG.format(dropout=dropout))


def _check_rank(rank: int, path: str, linear: Linear) -> None:
    limit = min(linear.in_dim, linear.out_dim)
    if rank > limit:
        raise ArgumentError(
            "rank",
            RANK_TOO_LARGE_MSG.format(
                rank=rank, path=path, in_dim=linear.in_dim, out_dim=linear.out_dim, limit=limit
            ),
        )


def lora_linear(
    linear: Linear,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    *,
    rng_key: jax.Array | None = None,
    path: str = "linear",
) -> LoRALinear:
    """`linear` with a LoRA adapter: its weight and bias frozen (`pax.freeze_parameters`), the
    adapter trainable. `path` names the layer in messages.

    Raises `ArgumentError` for rank < 1 or > min(in, out), alpha <= 0, dropout outside [0, 1).

    Example:
        >>> layer = lora_linear(nn.Linear(4, 3), rank=2, alpha=4.0)
        >>> bool(jnp.array_equal(layer(jnp.ones((1, 4))), nn.Linear(4, 3)(jnp.ones((1, 4)))))
        False
        >>> lora_linear(nn.Linear(4, 3), rank=4, alpha=4.0)
        Traceback (most recent call last):
        paxtrain.errors.ArgumentError: LoRA rank=4 must be at most min(in, out) of every adapted ...
    """
    _check_hyperparameters(rank, alpha, dropout)
    _check_rank(rank, path, linear)
    frozen = pax.freeze_parameters(LoRALinear(linear, rank, alpha, dropout, rng_key=rng_key))
    return frozen.replace(adapter=pax.unfreeze_parameters(frozen.adapter))


def _map_modules(
    module: M, visit: Callable[[pax.Module, str], pax.Module | None], path: str = ""
) -> M:
    """`module` with each submodule for which `visit(sub, path)` returns a module replaced by
    it (its children are not visited then); `visit` returning None goes deeper."""
    fields = {}
    for name, kind, child in child_fields(module):
        if kind != MODULE:
            continue
        prefix = f"{path}.{name}" if path else name

        def one(key_path, sub, prefix=prefix):
            if not isinstance(sub, pax.Module):
                return sub
            sub_path = path_str(key_path, prefix=prefix)
            replaced = visit(sub, sub_path)
            return _map_modules(sub, visit, sub_path) if replaced is None else replaced

        fields[name] = jax.tree_util.tree_map_with_path(
            one, child, is_leaf=lambda x: isinstance(x, pax.Module)
        )
    return rebuild(module, fields)


def linear_paths(model: pax.Module) -> list[str]:
    """The paths of the `Linear`s of `model` (`paxtrain.core.tree`'s dialect), in order.

    Example:
        >>> linear_paths(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
        ['layers.0', 'layers.1']
    """
    return list(_linears(model))


def _linears(model: pax.Module) -> dict[str, Linear]:
    found: dict[str, Linear] = {}

    def visit(sub: pax.Module, path: str) -> None:
        if isinstance(sub, Linear):
            found[path] = sub

    _map_modules(model, visit)
    return found


def _example_pattern(linears: list[str]) -> str:
    """A regex for the first `Linear` of a message: its name (`query_proj$`), or its whole path
    when the name is a list position (`layers\\.0$`)."""
    first = linears[0] if linears else "proj"
    name = first.rpartition(".")[2]
    return (re.escape(first) if name.isdigit() else name) + "$"


def apply_lora(
    model: M,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    paths: Sequence[str],
    key: jax.Array | None = None,
) -> M:
    """`model` with each `Linear` whose path matches a regex of `paths` made a `LoRALinear`
    (`lora_linear`) and every other parameter frozen (as peft does): only the adapters train,
    and the outputs are unchanged until B does.

    Args:
      model: any module; its `Linear`s are found at any depth, in `ScanLayers` stacks too.
      rank: the adapters' rank, 1 to min(in, out) of every adapted layer.
      alpha: the adapters' update is scaled by alpha / rank.
      dropout: the fraction of the adapters' inputs zeroed in training mode.
      paths: regexes searched in the layers' paths (`blocks.layers.0.attention.query_proj`,
        the dialect of `freeze` and the tensor rules, `paxtrain.core.tree`); each must match
        at least one `Linear`.
      key: the adapters' initialization key; None: drawn from pax's global key.

    Raises `ArgumentError` naming the argument (`rank`, `alpha`, `dropout`, `paths`).

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
        >>> adapted = apply_lora(model, rank=2, alpha=4.0, paths=[r"\\.0$"])
        >>> adapted.layers[0].adapter.lora_a.shape
        (2, 8)
        >>> apply_lora(model, rank=2, alpha=4.0, paths=["q_proj"])
        Traceback (most recent call last):
        paxtrain.errors.ArgumentError: LoRA `paths` pattern 'q_proj' matches no `Linear` of the model. The model's `Linear`s are: ['layers.0', 'layers.1']. Write regexes on those paths in `paths`, e.g. 'layers\\\\.0$'.
    """
    _check_hyperparameters(rank, alpha, dropout)
    layers = _linears(model)
    linears = list(layers)
    shown = linears[:SHOWN_PATHS] + (["..."] if len(linears) > SHOWN_PATHS else [])
    example = _example_pattern(linears)
    if not paths:
        raise ArgumentError("paths", NO_PATHS_MSG.format(example=example, linears=shown))
    for pattern in paths:
        if not any(path_search(pattern, path) for path in linears):
            raise ArgumentError(
                "paths", NO_MATCH_MSG.format(pattern=pattern, linears=shown, example=example)
            )
    key = pax.next_rng_key() if key is None else key
    selected = [path for path in linears if any(path_search(rx, path) for rx in paths)]
    # Before any layer is built: the message names the narrowest layer, not the first.
    narrowest = min(selected, key=lambda path: min(layers[path].in_dim, layers[path].out_dim))
    _check_rank(rank, narrowest, layers[narrowest])

    def visit(sub: pax.Module, path: str) -> pax.Module | None:
        if not isinstance(sub, Linear) or path not in selected:
            return None
        layer_key = jax.random.fold_in(key, selected.index(path))
        return lora_linear(sub, rank, alpha, dropout, rng_key=layer_key, path=path)

    return _map_modules(pax.freeze_parameters(model), visit)


def merge_lora(model: M) -> M:
    """`model` with every `LoRALinear` replaced by the plain `Linear` it computes: the adapter
    folded into the weight (`weight + (B @ A).T * alpha/rank`), and every parameter trainable
    again (`apply_lora` froze them all): the model a full fine-tune of the result starts from.
    What `paxtrain export --merge` writes.

    Example:
        >>> adapted = apply_lora(nn.Sequential(nn.Linear(4, 4)), rank=2, alpha=2.0, paths=["0"])
        >>> type(merge_lora(adapted).layers[0]).__name__
        'Linear'
    """
    merged = _map_modules(
        model, lambda sub, _: sub.merged() if isinstance(sub, LoRALinear) else None
    )
    return pax.unfreeze_parameters(merged)
