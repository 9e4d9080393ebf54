"""Mixed-precision policies kept as data on the module."""

import copy
import pickle

import jax
import jax.numpy as jnp
import pytest
from core_modules import MLP, Counter, Linear

import paxtrain as pax

POLICY = "params=float32,compute=bfloat16,output=float32"


def test_policy_casts_compute_and_output_and_keeps_parameters():
    lin = pax.apply_mp_policy(Linear(3, 2), POLICY)
    seen = {}

    class Spy(Linear):
        def __call__(self, x):
            seen["weight"], seen["x"] = self.weight.dtype, x.dtype
            return super().__call__(x)

    spy = pax.apply_mp_policy(Spy(3, 2), POLICY)
    y = spy(jnp.ones((1, 3)))
    assert seen == {"weight": jnp.bfloat16, "x": jnp.bfloat16}
    assert y.dtype == jnp.float32 and spy.weight.dtype == jnp.float32
    assert lin(jnp.ones((1, 3))).dtype == jnp.float32
    assert "mp_policy=params=float32,compute=bfloat16,output=float32" in repr(lin)


def test_policy_survives_copy_replace_freeze_pickle_and_jit():
    lin = pax.apply_mp_policy(Linear(3, 2), pax.MpPolicy())
    variants = [
        lin.copy(),
        lin.replace(bias=jnp.ones(2)),
        pax.freeze_parameters(lin),
        pickle.loads(pickle.dumps(lin)),
        copy.deepcopy(lin),
        jax.jit(lambda m: m)(lin),
    ]
    for v in variants:
        assert v.__dict__["_pax_info"].mp_policy == pax.MpPolicy()
        assert type(v) is Linear
    assert pax.unwrap_mp_policy(lin).__dict__["_pax_info"].mp_policy is None


def test_applying_twice_and_unwrapping_a_plain_module_fail():
    lin = pax.apply_mp_policy(Linear(3, 2), POLICY)
    with pytest.raises(ValueError, match="unwrap_mp_policy"):
        pax.apply_mp_policy(lin, POLICY)
    with pytest.raises(ValueError, match="no mixed-precision policy"):
        pax.unwrap_mp_policy(Linear(3, 2))


def test_state_updates_under_a_policy_keep_their_dtype():
    class Stats(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_state("mean", jnp.zeros(2, jnp.float32))
            self.counter = Counter()

        def __call__(self, x):
            self.mean = 0.5 * self.mean + 0.5 * x.mean(0)
            return self.counter(x)

    stats = pax.apply_mp_policy(Stats(), POLICY)
    stats, y = pax.purecall(stats, jnp.full((4, 2), 3.0))
    assert stats.mean.dtype == jnp.float32 and float(stats.mean[0]) == 1.5
    assert int(stats.counter.count) == 1
    assert stats.__dict__["_pax_info"].mp_policy is not None
    stats, _ = pax.purecall(stats, jnp.full((4, 2), 3.0))
    assert float(stats.mean[0]) == 2.25 and int(stats.counter.count) == 2


def test_policy_on_a_submodule_via_apply():
    net = MLP([2, 3, 1])
    net = net.apply(lambda m: pax.apply_mp_policy(m, POLICY) if isinstance(m, Linear) else m)
    _, y = pax.purecall(net, jnp.ones((1, 2)))
    assert y.dtype == jnp.float32
    assert str(net.layers[0].__dict__["_pax_info"].mp_policy) == POLICY
    assert net.__dict__["_pax_info"].mp_policy is None


def test_policy_from_string_rejects_unknown_fields():
    with pytest.raises(ValueError, match="Unknown policy field 'param'"):
        pax.MpPolicy.from_string("param=float32")
