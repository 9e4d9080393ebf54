"""Mixed-precision policies kept as data on the module."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
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


POLICIES = [
    "params=float32,compute=bfloat16,output=float32",
    "params=float32,compute=float16,output=float32",
    "params=float32,compute=bfloat16,output=bfloat16",
    "params=float32,compute=float32,output=float32",
]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_call_never_writes_parameters_back(policy):
    """The f32 master weights must come back bitwise, not rounded to the compute dtype."""
    lin = pax.apply_mp_policy(Linear(3, 2), policy)
    x = jnp.linspace(-1, 1, 6).reshape(2, 3)
    new, _ = pax.purecall(lin, x)
    assert new.weight.dtype == jnp.float32
    assert jnp.array_equal(new.weight, lin.weight) and jnp.array_equal(new.bias, lin.bias)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_train_step_with_zero_learning_rate_leaves_weights_bitwise_unchanged(policy):
    import optax

    from paxtrain.train import TrainState, make_train_step

    def loss(model, batch):
        model, y = pax.purecall(model, batch)
        return jnp.mean(y.astype(jnp.float32) ** 2), (model, {})

    model = pax.apply_mp_policy(
        Linear(3, 2).replace(weight=jnp.full((3, 2), 1 + 2**-12, jnp.float32)), policy
    )
    state = TrainState.create(model, optax.sgd(0.0))
    before = jax.tree_util.tree_map(jnp.copy, pax.select_parameters(state.model))
    state, _ = make_train_step(loss)(state, jnp.ones((4, 3)))
    after = pax.select_parameters(state.model)
    for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before)):
        assert a.dtype == jnp.float32 and jnp.array_equal(a, b)


def test_updates_below_a_bf16_ulp_reach_the_f32_weights():
    """A tiny SGD step moves the weights exactly as an f32 update of the bf16 gradient does."""
    import optax

    from paxtrain.train import TrainState, make_train_step

    lr = 1e-4  # lr * grad is far below a bf16 ulp of weights near 1 (2**-7)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    weight = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, (3, 2)), jnp.float32)

    def loss(model, batch):
        model, y = pax.purecall(model, batch)
        return jnp.mean(y.astype(jnp.float32) ** 2), (model, {})

    model = pax.apply_mp_policy(Linear(3, 2).replace(weight=jnp.copy(weight)), POLICY)
    state = TrainState.create(model, optax.sgd(lr))
    state, _ = make_train_step(loss)(state, x)

    def reference_loss(w):  # raw JAX: the same bf16 computation, parameters as arguments
        y = x.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)
        return jnp.mean(y.astype(jnp.float32) ** 2)

    grad = jax.grad(reference_loss)(weight)
    expected = weight - lr * grad
    assert not jnp.array_equal(state.model.weight, weight)
    np.testing.assert_allclose(state.model.weight, expected, rtol=0, atol=1e-7)
    rounded = weight.astype(jnp.bfloat16).astype(jnp.float32)
    assert jnp.abs(state.model.weight - rounded).max() > 1e-4  # not snapped to bf16


@pytest.mark.parametrize("policy", POLICIES[:2])
def test_batchnorm_statistics_under_a_policy_stay_float32(policy):
    import paxtrain.nn as nn

    bn = pax.apply_mp_policy(nn.BatchNorm(3, decay_rate=0.5), policy)  # [C] shapes
    x = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, (64, 3)), jnp.float32)
    bn, y = pax.purecall(bn, x)
    compute = jnp.dtype(policy.split(",")[1].split("=")[1])
    x_seen = np.asarray(x.astype(compute), np.float64)  # what the layer computes with
    mean, var = bn.ema_mean.averages, bn.ema_var.averages
    assert mean.dtype == jnp.float32 and var.dtype == jnp.float32
    # The first training call sets the (debiased, as in PAX) running statistics.
    np.testing.assert_allclose(mean, x_seen.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, x_seen.var(0), rtol=1e-5)
    assert y.dtype == jnp.float32


def test_batchnorm_in_a_bf16_network_keeps_bf16_compute():
    import paxtrain.nn as nn

    seen = []

    class Spy(nn.Linear):
        def __call__(self, x):
            seen.append(x.dtype)
            return super().__call__(x)

    net = pax.apply_mp_policy(Spy(3, 4) >> nn.BatchNorm1D(4) >> Spy(4, 2), POLICY)
    net, y = pax.purecall(net, jnp.ones((8, 3)))
    assert seen == [jnp.bfloat16, jnp.bfloat16] and y.dtype == jnp.float32
    assert net[1].ema_mean.averages.dtype == jnp.float32


def test_the_trainers_loss_runs_under_the_policy_even_without_self_call():
    """A `loss` that uses its submodules directly still computes in bf16 under the Trainer."""
    from paxtrain.train.trainer import model_eval, model_loss

    seen = []

    class Spy(Linear):
        def __call__(self, x):
            seen.append(x.dtype)
            return super().__call__(x)

    class Net(pax.Module):
        def __init__(self):
            super().__init__()
            self.fc = Spy(3, 2)

        def loss(self, x):  # never calls self(...)
            y = self.fc(x)
            return jnp.mean(y.astype(jnp.float32) ** 2), {"out_dtype": jnp.zeros((), y.dtype)}

    net = pax.apply_mp_policy(Net(), POLICY)
    loss, (new, metrics) = model_loss(net, jnp.ones((4, 3)))
    assert seen == [jnp.bfloat16] and loss.dtype == jnp.float32
    assert jnp.array_equal(new.fc.weight, net.fc.weight) and new.fc.weight.dtype == jnp.float32
    assert model_eval(net.eval(), jnp.ones((4, 3)))["loss"].dtype == jnp.float32
    assert seen == [jnp.bfloat16, jnp.bfloat16]
