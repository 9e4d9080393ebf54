"""Every name of PAX v0.4.3's `__all__` (`pax`, `pax.nn`, `pax.utils`) resolves after
`import paxtrain as pax`, or raises an AttributeError that names the replacement.

The lists are copied from PAX v0.4.3's `pax/__init__.py`, `pax/nn.py` and `pax/utils.py`.
"""

import importlib
import subprocess
import sys

import pytest

import paxtrain as pax

PAX_ALL = (
    "apply_mp_policy", "assert_structure_equal", "build_update_fn", "dropout",
    "enable_eval_mode", "enable_train_mode", "experimental", "freeze_parameters", "grad",
    "module_and_value", "Module", "nets", "next_rng_key", "nn", "ParameterModule", "PaxKind",
    "pure", "scan", "seed_rng_key", "select_parameters", "select_states", "StateModule",
    "unfreeze_parameters", "unwrap_mp_policy", "update_parameters", "update_states", "utils",
    "value_and_grad",
)  # fmt: skip
PAX_NN_ALL = (
    "avg_pool", "BatchNorm1D", "BatchNorm2D", "Conv1D", "Conv1DTranspose", "Conv2D",
    "Conv2DTranspose", "Dropout", "EMA", "Embed", "GroupNorm", "GRU", "GRUState", "Identity",
    "Lambda", "LayerNorm", "Linear", "LSTM", "LSTMState", "max_pool", "MultiHeadAttention",
    "RngSeq", "Sequential",
)  # fmt: skip
PAX_UTILS_ALL = ("build_update_fn", "grad", "scan")
# Names PAX had that paxtrain deliberately does not: the error must say what to use instead.
REFUSED = {"nets": "paxtrain.recipes.transformer_lm", "experimental": "paxtrain.checkpoint"}

CASES = (
    [("paxtrain", n) for n in PAX_ALL]
    + [("paxtrain.nn", n) for n in PAX_NN_ALL]
    + [("paxtrain.utils", n) for n in PAX_UTILS_ALL]
)


@pytest.mark.parametrize(("module", "name"), CASES)
def test_every_pax_name_resolves_or_names_its_replacement(module, name):
    namespace = importlib.import_module(module)
    if module == "paxtrain" and name in REFUSED:
        with pytest.raises(AttributeError, match=f"paxtrain: .*{REFUSED[name]}"):
            getattr(namespace, name)
    else:
        assert getattr(namespace, name) is not None


def test_pax_nn_and_pax_utils_work_after_a_bare_import():
    # A fresh interpreter: nothing else has imported paxtrain.nn or paxtrain.utils yet.
    code = (
        "import paxtrain as pax\n"
        "assert pax.nn.Linear(2, 3).out_dim == 3\n"
        "assert pax.utils.build_update_fn is pax.build_update_fn\n"
        "assert pax.nn.RngSeq is pax.RngSeq and pax.utils.scan is pax.scan\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pax_kind_constants_and_default_kind_modules():
    assert pax.P is pax.PARAMETER is pax.PaxKind.PARAMETER
    assert pax.S is pax.STATE is pax.PaxKind.STATE
    import jax.numpy as jnp

    class Scale(pax.ParameterModule):
        def __init__(self):
            super().__init__()
            self.weight = jnp.ones(2)
            self.sub = pax.nn.Linear(2, 2)

    class Counter(pax.StateModule):
        def __init__(self):
            super().__init__()
            self.count = jnp.array(0)
            self.register_subtree("extra", jnp.zeros(1), pax.PaxKind.PARAMETER)

    scale, counter = Scale(), Counter()
    assert scale.__dict__["_pax_info"].kind_of("weight") == "parameter"
    assert counter.__dict__["_pax_info"].kind_of("count") == "state"
    assert counter.__dict__["_pax_info"].kind_of("extra") == "parameter"
    assert pax.select_parameters(counter).count is None


def test_unknown_names_still_raise_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        pax.no_such_thing  # noqa: B018
