"""Sweep expansion (`paxtrain fit -m`) through Hydra's public override parser."""

import pytest

from paxtrain.cli.sweep import sweep_overrides
from paxtrain.errors import ConfigError


def test_cartesian_product_in_key_order_with_fixed_overrides_in_each():
    jobs = sweep_overrides(["a=1,2", "b=x", "c=choice(p,q,r)"])
    assert jobs == [[f"a={a}", "b=x", f"c={c}"] for a in ("1", "2") for c in ("p", "q", "r")]


def test_range_is_half_open_with_a_step():
    assert sweep_overrides(["seed=range(0,7,3)"]) == [["seed=0"], ["seed=3"], ["seed=6"]]
    assert sweep_overrides(["seed=range(3)"]) == [["seed=0"], ["seed=1"], ["seed=2"]]


def test_no_sweep_is_one_job_and_prefixes_and_groups_are_kept():
    overrides = ["+trainer.ema_decay=0.99", "~callbacks", "model=gru", "data.path=/x/y.txt"]
    assert sweep_overrides(overrides) == [overrides]


def test_a_list_value_is_one_value_not_a_sweep():
    assert sweep_overrides(["trainer.loggers=[jsonl,tensorboard]", "seed=1,2"]) == [
        ["trainer.loggers=[jsonl,tensorboard]", "seed=1"],
        ["trainer.loggers=[jsonl,tensorboard]", "seed=2"],
    ]


def test_a_key_given_twice_keeps_its_last_value():
    assert sweep_overrides(["seed=1,2", "seed=5"]) == [["seed=5"]]


def test_interval_and_bad_syntax_are_config_errors():
    with pytest.raises(
        ConfigError, match=r"`optimizer.learning_rate=interval\(0,1\)` is a interval"
    ):
        sweep_overrides(["optimizer.learning_rate=interval(0,1)"])
    with pytest.raises(ConfigError, match=r"Override 'seed=range\(1,' cannot be parsed"):
        sweep_overrides(["seed=range(1,"])
