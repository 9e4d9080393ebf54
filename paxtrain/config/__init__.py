"""Run configuration: the schema, `_target_` sections, composition with Hydra, the optimizer
section, the list of keys, and the configs shipped with paxtrain.

    >>> from paxtrain.config import compose
    >>> compose("char_rnn", ["trainer.max_steps=10"]).trainer.max_steps  # doctest: +SKIP
    10
"""

from paxtrain.config.composition import compose
from paxtrain.config.schema import FitConfig, validate
from paxtrain.errors import ConfigError

__all__ = ["ConfigError", "FitConfig", "compose", "validate"]
