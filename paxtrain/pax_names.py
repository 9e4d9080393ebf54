"""PAX v0.4.3's public names that paxtrain resolves lazily, or refuses with the replacement.

This is the one table of deliberate differences in naming: `paxtrain` ends with
`__getattr__ = names_of(__name__)`, so a PAX name either resolves (importing what it needs on
first use, which keeps `import paxtrain` light and free of import cycles) or raises an
`AttributeError` that says what to write instead. `paxtrain.nn` and `paxtrain.utils` define
every PAX name they have; a module that needs such a table adds its entry here.

    >>> import paxtrain as pax
    >>> pax.nn.Linear(2, 3)
    Linear(in_dim=2, out_dim=3, with_bias=True)
    >>> pax.nets
    Traceback (most recent call last):
    AttributeError: ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# module -> {name: (module to import, attribute of it, or None for the module itself)}
LAZY: dict[str, dict[str, tuple[str, str | None]]] = {
    "paxtrain": {
        "nn": ("paxtrain.nn", None),
        "utils": ("paxtrain.utils", None),
        "optim": ("paxtrain.optim", None),
        "build_update_fn": ("paxtrain.utils", "build_update_fn"),
        "dropout": ("paxtrain.nn.dropout", "dropout"),
    },
}

_NETS = (
    "pax.nets (ResNet18..ResNet200, Transformer) is not part of paxtrain. Build the model from "
    "paxtrain.nn layers; paxtrain.recipes.image_classifier (a CNN with BatchNorm2D) and "
    "paxtrain.recipes.transformer_lm (a GPT-style Transformer) are starting points."
)
_EXPERIMENTAL = (
    "pax.experimental is not part of paxtrain. Replacements: save_weights_to_dict / "
    "load_weights_from_dict -> paxtrain.checkpoint (Orbax) or jax.tree_util on the module; "
    "LazyModule -> create submodules in __init__; Flattener -> not needed (flattening is cached); "
    "default_mp_policy -> module.apply(...) with pax.apply_mp_policy; apply_scaled_gradients -> "
    "make_train_step(..., nonfinite_guard=True) or jmp's loss scale with optax."
)

# module -> {PAX name: the message naming what to write instead}
REPLACED: dict[str, dict[str, str]] = {
    "paxtrain": {
        "nets": _NETS,
        "experimental": _EXPERIMENTAL,
    },
}


def names_of(module_name: str) -> Callable[[str], Any]:
    """The module-level `__getattr__` of `module_name`, reading the two tables above.

    Example:
        >>> __getattr__ = names_of(__name__)  # doctest: +SKIP
    """
    lazy, replaced = LAZY[module_name], REPLACED[module_name]

    def __getattr__(name: str) -> Any:
        if name in lazy:
            target, attribute = lazy[name]
            value = importlib.import_module(target)
            return value if attribute is None else getattr(value, attribute)
        if name in replaced:
            raise AttributeError(f"paxtrain: `{module_name}.{name}`: {replaced[name]}")
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
