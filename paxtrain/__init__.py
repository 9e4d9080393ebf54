"""paxtrain: a training framework for JAX built on immutable PAX-style modules.

`import paxtrain as pax` gives the module core:

    >>> import jax.numpy as jnp, paxtrain as pax
    >>> class Counter(pax.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_state("count", jnp.array(0))
    ...     def __call__(self, x):
    ...         self.count = self.count + 1
    ...         return x
    >>> counter, _ = pax.purecall(Counter(), 1.0)
    >>> int(counter.count)
    1
"""

from paxtrain.core.default_kind import ParameterModule, PaxKind, StateModule
from paxtrain.core.errors import PaxValueError
from paxtrain.core.mixed_precision import (
    MpPolicy,
    apply_mp_policy,
    unwrap_mp_policy,
    with_mp_policy,
)
from paxtrain.core.module import Module, ModuleInfo
from paxtrain.core.partition import (
    enable_eval_mode,
    enable_train_mode,
    freeze_parameters,
    select_parameters,
    select_states,
    unfreeze_parameters,
    update_parameters,
    update_states,
)
from paxtrain.core.pure import module_and_value, pure, purecall
from paxtrain.core.rng import RngSeq, next_rng_key, seed_rng_key
from paxtrain.core.structure import assert_structure_equal
from paxtrain.core.transforms import grad, scan, value_and_grad
from paxtrain.pax_names import names_of

__version__ = "0.1.0"

# PAX v0.4.3's short names for the attribute kinds.
PARAMETER = P = PaxKind.PARAMETER
STATE = S = PaxKind.STATE

# `pax.nn`, `pax.utils`, `pax.build_update_fn`, `pax.dropout` on first use; PAX names paxtrain
# does not have raise with the replacement (paxtrain/pax_names.py).
__getattr__ = names_of(__name__)

__all__ = [
    "Module",
    "ModuleInfo",
    "MpPolicy",
    "ParameterModule",
    "PaxKind",
    "PaxValueError",
    "RngSeq",
    "StateModule",
    "apply_mp_policy",
    "assert_structure_equal",
    "build_update_fn",
    "dropout",
    "enable_eval_mode",
    "enable_train_mode",
    "freeze_parameters",
    "grad",
    "module_and_value",
    "next_rng_key",
    "nn",
    "pure",
    "purecall",
    "scan",
    "seed_rng_key",
    "select_parameters",
    "select_states",
    "unfreeze_parameters",
    "unwrap_mp_policy",
    "update_parameters",
    "update_states",
    "utils",
    "value_and_grad",
    "with_mp_policy",
]
