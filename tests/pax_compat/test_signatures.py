"""PAX v0.4.3 functions called with PAX's keywords and conventions do what PAX did."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax


def _leaves_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_build_update_fn_returns_model_optimizer_aux_and_takes_inputs_and_kwinputs():
    def loss_fn(model, x, *, y):
        model, y_hat = pax.purecall(model, x)
        loss = jnp.mean((y_hat - y) ** 2)
        return loss, ({"loss": loss}, model)

    net = pax.nn.Linear(2, 1)
    opt = pax.optim.sgd(0.1)(net.parameters())
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    new_net, new_opt, aux = pax.utils.build_update_fn(loss_fn)(net, opt, x, y=y)
    grads = pax.grad(lambda m: jnp.mean(m(x) ** 2))(net)
    np.testing.assert_allclose(new_net.weight, net.weight - 0.1 * grads.weight, rtol=1e-6)
    np.testing.assert_allclose(aux["loss"], jnp.mean(net(x) ** 2), rtol=1e-6)
    assert isinstance(new_opt, type(opt))

    (scan_net, _), scan_aux = pax.utils.build_update_fn(loss_fn, scan_mode=True)((net, opt), x, y=y)
    _leaves_equal(scan_net, new_net)


def test_build_update_fn_refuses_a_loss_fn_that_does_not_return_the_model():
    def loss_fn(model, x):
        loss = jnp.sum(model(x))
        return loss, (loss, model.eval())

    net = pax.nn.Linear(2, 1)
    opt = pax.optim.sgd(0.1)(net.parameters())
    with pytest.raises(ValueError, match=r"return `loss, \(aux, model\)`"):
        pax.utils.build_update_fn(loss_fn)(net, opt, jnp.ones((1, 2)))


def test_apply_mp_policy_takes_a_jmp_style_policy_by_keyword():
    jmp_like = types.SimpleNamespace(
        param_dtype=jnp.float32, compute_dtype=jnp.bfloat16, output_dtype=jnp.float32
    )
    seen = []

    class Spy(pax.nn.Linear):
        def __call__(self, x):
            seen.append((x.dtype, self.weight.dtype))
            return super().__call__(x)

    net = pax.apply_mp_policy(Spy(2, 3), mp_policy=jmp_like)
    y = net(jnp.ones((1, 2)))
    assert seen == [(jnp.bfloat16, jnp.bfloat16)] and y.dtype == jnp.float32
    assert net.weight.dtype == jnp.float32


@pytest.mark.parametrize("bad", [object(), types.SimpleNamespace(param_dtype=jnp.float32), 3])
def test_apply_mp_policy_refuses_anything_else_at_once(bad):
    with pytest.raises(TypeError, match="apply_mp_policy expects an MpPolicy"):
        pax.apply_mp_policy(pax.nn.Linear(2, 3), mp_policy=bad)


def test_rng_seq_in_eval_mode_returns_keys_without_advancing():
    rng = pax.nn.RngSeq(seed=1)
    frozen = rng.eval()
    key = frozen.next_rng_key()  # no purecall needed: nothing changes
    np.testing.assert_array_equal(key, jax.random.split(jax.random.PRNGKey(1))[1])
    np.testing.assert_array_equal(frozen.next_rng_key(), key)
    trained, key1 = pax.purecall(rng.next_rng_key)
    trained, key2 = pax.purecall(trained.next_rng_key)
    np.testing.assert_array_equal(key1, key)
    assert not np.array_equal(key1, key2)


def test_unfreeze_parameters_with_origin_restores_exactly_the_trainable_parts():
    net = pax.nn.Sequential(pax.nn.Linear(2, 2), pax.nn.Linear(2, 1))
    net = net.set(0, pax.freeze_parameters(net[0]))
    frozen = pax.freeze_parameters(net)
    assert jax.tree_util.tree_leaves(pax.select_parameters(frozen)) == []
    restored = pax.unfreeze_parameters(frozen, origin=net)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(net)
    assert pax.select_parameters(restored)[0].weight is None
    assert pax.select_parameters(restored)[1].weight is not None
    with pytest.raises(ValueError, match="must be `freeze_parameters\\(origin\\)`"):
        pax.unfreeze_parameters(net, origin=pax.nn.Linear(3, 3))


def test_pure_and_module_and_value_take_static_argnums_and_check_leaks():
    @pax.pure
    def touch(m):
        m.new_attribute = 1
        return m

    def reads(m, config, x):
        return m(x) * config["scale"]

    net = pax.nn.Linear(2, 1)
    out = pax.pure(reads, static_argnums=(1,), check_leaks=False)(
        net, {"scale": 2.0}, jnp.ones((1, 2))
    )
    np.testing.assert_allclose(out, 2 * net(jnp.ones((1, 2))))
    assert touch(net).new_attribute == 1

    def set_attr(m, other):
        other.x = 1  # `other` is static: passed as is, so it stays immutable

    with pytest.raises(ValueError, match="immutable"):
        pax.pure(set_attr, static_argnums=1)(net, pax.nn.Linear(1, 1))
    bn = pax.nn.BatchNorm1D(2)
    new_bn, _ = pax.module_and_value(bn, static_argnums=None, check_leaks=True)(jnp.ones((3, 2)))
    assert float(new_bn.ema_mean.debias) == 1.0


def test_module_map_invert_or_and_sequential_modules():
    net = pax.nn.Sequential(pax.nn.Linear(2, 2), pax.nn.BatchNorm1D(2))
    assert net.modules == net.layers
    params = ~net
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(net.parameters())
    doubled = params.map(lambda p: 2 * p)
    merged = net | doubled
    np.testing.assert_array_equal(merged[0].weight, 2 * net[0].weight)
    np.testing.assert_array_equal(merged[1].ema_mean.averages, net[1].ema_mean.averages)
    diff = merged.map(jax.lax.sub, net)
    np.testing.assert_array_equal(diff[0].weight, net[0].weight)


def test_pax_dataclass_module_example_runs():
    """PAX v0.4.3's examples/dataclass_module.py, with only the import changed."""
    import dataclasses
    from collections.abc import Callable

    @dataclasses.dataclass
    class Linear(pax.Module):
        in_dim: int
        out_dim: int
        with_bias: bool = True
        name: str | None = None
        weight: jnp.ndarray = dataclasses.field(init=False, repr=False)
        bias: jnp.ndarray | None = dataclasses.field(init=False, repr=False)
        counter: jnp.ndarray = dataclasses.field(init=False)
        w_init: Callable = dataclasses.field(default=jax.nn.initializers.normal(), repr=False)
        b_init: Callable = dataclasses.field(default=jax.nn.initializers.zeros, repr=False)

        def __post_init__(self):
            with self.add_parameters():
                self.weight = self.w_init(pax.next_rng_key(), (self.in_dim, self.out_dim))
                self.bias = self.b_init(None, (self.out_dim,)) if self.with_bias else None
            with self.add_states():
                self.counter = jnp.array(0)

        def __call__(self, x):
            self.counter += 1
            x = jnp.dot(x, self.weight)
            return x + self.bias if self.with_bias else x

    fc = Linear(3, 4, name="fc1")
    assert fc.name == "fc1"
    fc, y = pax.module_and_value(fc)(jnp.ones((2, 3)))
    np.testing.assert_allclose(y, jnp.ones((2, 3)) @ fc.weight + fc.bias, rtol=1e-6)
    assert int(fc.counter) == 1
    assert fc.__dict__["_pax_info"].kind_of("weight") == "parameter"


def test_name_assigned_in_init_and_arrays_declared_later_in_init():
    class M(pax.Module):
        def __init__(self):
            super().__init__()
            self.name = "block"
            self.weight = jnp.zeros(2)  # declared below, as PAX allowed
            self.count = jnp.array(0)
            self.set_attribute_kind(weight=pax.P, count=pax.S)

    m = M()
    assert m.name == "block" and repr(m) == "(block) M()"
    assert jax.tree_util.tree_leaves(pax.select_parameters(m))[0].shape == (2,)

    class Undeclared(pax.Module):
        def __init__(self):
            super().__init__()
            self.weight = jnp.zeros(2)

    with pytest.raises(ValueError, match="`weight` is not a declared parameter or state"):
        Undeclared()


def test_refused_as_in_pax_slots_class_arrays_del_and_sharing():
    with pytest.raises(TypeError, match="__slots__"):

        class Slotted(pax.Module):
            __slots__ = ("a",)

    with pytest.raises(TypeError, match="at class level"):

        class ClassArray(pax.Module):
            w = jnp.ones(2)

    @pax.pure
    def delete_bias(m):
        del m.bias

    with pytest.raises(ValueError, match="Cannot delete `Linear.bias`"):
        delete_bias(pax.nn.Linear(2, 2))
    layer = pax.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="are the same Linear instance"):
        pax.nn.Sequential(layer, layer)
    lines = pax.nn.Sequential(pax.nn.Linear(2, 2)).summary(return_list=True)
    assert isinstance(lines, list) and lines[0].startswith("Sequential")
    assert pax.nn.Lambda(jax.nn.relu).func is jax.nn.relu
