"""`paxtrain.cli.build.instantiate`: Hydra's `instantiate` after the signature checks."""

import pytest
from omegaconf import OmegaConf

from paxtrain.cli.build import instantiate
from paxtrain.errors import ConfigError


def section(**values):
    return OmegaConf.create({"model": {"_target_": "targets_support.Block", **values}}).model


def test_nested_targets_are_built_first():
    inner = {"_target_": "targets_support.Block", "width": 2}
    block = instantiate(section(width=4, inner=inner), "model")
    assert block.width == 4 and type(block.inner).__name__ == "Block" and block.inner.width == 2


def test_partial_gives_a_callable_taking_the_rest():
    make = instantiate(section(_partial_=True, scale=2.0), "model")
    block = make(width=3)
    assert (block.width, block.scale) == (3, 2.0)


def test_provided_values_pass_as_they_are_and_only_where_asked():
    block = instantiate(section(), "model", width=5, shape=(28, 28, 1), vocab_size=97)
    assert block.width == 5 and block.shape == (28, 28, 1)  # a tuple, not an OmegaConf list
    assert instantiate(section(width=1), "model", width=5).width == 1  # the config wins


def test_nested_sections_are_checked_before_anything_is_built():
    bad = section(width=4, inner={"_target_": "targets_support.Block", "widht": 2})
    with pytest.raises(ConfigError, match=r"`model.inner.widht` is not a parameter of .*`width`"):
        instantiate(bad, "model")
    with pytest.raises(ConfigError, match=r"`model.inner` is missing required parameter\(s\)"):
        instantiate(section(width=4, inner={"_target_": "targets_support.Block"}), "model")
    with pytest.raises(ConfigError, match=r"`model.inner.width` is 'x', but targets_support"):
        instantiate(
            section(width=4, inner={"_target_": "targets_support.Block", "width": "x"}), "model"
        )


def test_a_constructor_value_error_names_the_nested_key():
    inner = {"_target_": "targets_support.Block", "width": 2, "scale": -1.0}
    with pytest.raises(ConfigError) as info:
        instantiate(section(width=4, inner=inner), "model")
    assert str(info.value) == (
        "`model.inner` (targets_support.Block): scale must be >= 0, got -1.0"
    )


def test_a_bug_in_a_target_keeps_its_own_exception():
    node = OmegaConf.create({"_target_": "targets_support.broken", "width": 1})
    with pytest.raises(TypeError, match="a bug inside the target"):
        instantiate(node, "model")
