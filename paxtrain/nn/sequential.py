"""Composition: `Sequential`, the `>>` operator, `Identity` and `Lambda`.

`Chainable` is a mixin that gives a module `a >> b`; every one-input layer of `paxtrain.nn` has
it, and user modules can add it (`class Block(nn.Chainable, pax.Module)`). A plain function in a
chain is wrapped in `Lambda`, so `nn.Linear(2, 3) >> jax.nn.relu` works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import paxtrain as pax

NOT_CALLABLE_MSG = """\
Sequential layers must be modules or functions; got {value!r} of type {type}.

Wrap the computation in a module, or pass a function: `nn.Sequential(nn.Linear(2, 3), jax.nn.relu)`."""


def _as_layer(value: Any) -> pax.Module:
    if isinstance(value, pax.Module):
        return value
    if callable(value):
        return Lambda(value)
    raise TypeError(NOT_CALLABLE_MSG.format(value=value, type=type(value).__name__))


def _layers_of(value: Any) -> tuple[pax.Module, ...]:
    # Flattening both sides makes `>>` associative: (a >> b) >> c == a >> (b >> c).
    return value.layers if isinstance(value, Sequential) else (_as_layer(value),)


class Chainable:
    """Mixin giving a module `self >> other`, which builds a `Sequential`.

    Example:
        >>> model = nn.Linear(2, 3) >> jax.nn.relu >> nn.Linear(3, 1)
        >>> len(model)
        3
    """

    def __rshift__(self, other: Any) -> Sequential:
        return Sequential(*_layers_of(self), *_layers_of(other))


class Identity(Chainable, pax.Module):
    """Returns its input.

    Example:
        >>> float(nn.Identity()(jnp.array(2.0)))
        2.0
    """

    def __call__(self, x: Any) -> Any:
        return x


class Lambda(Chainable, pax.Module):
    """Wraps a function as a layer; `fn` is static data, not a parameter.

    The arguments are PAX v0.4.3's, `Lambda(func, name=None)`, and a call passes every argument
    on (`Lambda(jnp.add)(x, y)`); in a `Sequential` the function gets one.

    Example:
        >>> relu = nn.Lambda(jax.nn.relu)
        >>> relu
        Lambda(fn=relu)
        >>> relu(jnp.array([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """

    def __init__(self, func: Callable[..., Any], name: str | None = None):
        super().__init__(name=name)
        self.fn = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def func(self) -> Callable[[Any], Any]:
        """PAX v0.4.3's name for `fn`."""
        return self.fn


class Sequential(Chainable, pax.Module):
    """Calls its layers one after the other; functions are wrapped in `Lambda`.

    Layers that update their state (BatchNorm, Dropout) do so when the Sequential is called
    through `pax.purecall` / `pax.module_and_value`, which make every layer a mutable copy.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), jax.nn.relu, nn.Linear(3, 1))
        >>> model(jnp.ones((4, 2))).shape
        (4, 1)
        >>> model[0]
        Linear(in_dim=2, out_dim=3, with_bias=True)
        >>> len(model[1:])
        2
        >>> model = model.set(-1, nn.Linear(3, 5))
        >>> model(jnp.ones((4, 2))).shape
        (4, 5)
    """

    def __init__(self, *layers: Any, name: str | None = None):
        super().__init__(name=name)
        self.layers = tuple(_as_layer(layer) for layer in layers)

    def __call__(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    @property
    def modules(self) -> tuple[pax.Module, ...]:
        """PAX v0.4.3's name for `layers`."""
        return self.layers

    def replace(self, **fields: Any) -> Sequential:
        """As `Module.replace`; `modules=` (PAX's name) replaces `layers`.

        Example:
            >>> model = nn.Sequential(nn.Linear(2, 3))
            >>> len(model.replace(modules=model.modules + (jax.nn.relu,)))
            2
        """
        if "modules" in fields:
            fields["layers"] = tuple(map(_as_layer, fields.pop("modules")))
        return super().replace(**fields)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[pax.Module]:
        return iter(self.layers)

    def __rrshift__(self, other: Any) -> Sequential:
        # `fn >> seq` and `user_module >> seq` where the left side has no `__rshift__`.
        return Sequential(*_layers_of(other), *self.layers)

    def set(self, index: int, layer: Any) -> Sequential:
        """A copy with layer `index` replaced by `layer`.

        Example:
            >>> model = nn.Sequential(nn.Linear(2, 3), jax.nn.relu)
            >>> model.set(1, jax.nn.tanh)[1]
            Lambda(fn=tanh)
        """
        index = range(len(self.layers))[index]  # negative indices, and IndexError when out of range
        layers = self.layers[:index] + (_as_layer(layer),) + self.layers[index + 1 :]
        return self.replace(layers=layers)
