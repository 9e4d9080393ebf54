"""The docstring examples of `paxtrain.nn` run and print what they claim."""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import pytest

import paxtrain as pax
import paxtrain.nn as nn

MODULES = ["paxtrain.nn"] + [
    f"paxtrain.nn.{info.name}" for info in pkgutil.iter_modules(nn.__path__)
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    globs = {"jax": jax, "jnp": jnp, "pax": pax, "nn": nn}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_public_name_is_exported_and_documented():
    for name in nn.__all__:
        obj = getattr(nn, name)
        assert obj.__doc__, name
