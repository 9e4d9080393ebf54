"""pure / module_and_value / purecall, and the leak checks under transformations."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_modules import MLP, Counter, Linear

import paxtrain as pax


def test_inputs_are_never_modified_and_outputs_are_immutable():
    counter = Counter()
    new, y = pax.module_and_value(counter)(5.0)
    assert int(counter.count) == 0 and int(new.count) == 1 and y == 5.0
    with pytest.raises(ValueError, match="immutable"):
        new.count = jnp.array(7)


def test_pure_copies_modules_nested_in_containers():
    @pax.pure
    def bump(counters):
        for c in counters["all"]:
            c(0)
        return counters

    before = {"all": [Counter(), Counter()]}
    after = bump(before)
    assert [int(c.count) for c in after["all"]] == [1, 1]
    assert [int(c.count) for c in before["all"]] == [0, 0]


def test_purecall_mod_operator_and_bound_methods():
    counter = Counter()
    c1, _ = pax.purecall(counter, 1.0)
    c2, _ = counter % 1.0
    assert int(c1.count) == int(c2.count) == 1

    class Acc(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_state("total", jnp.array(0.0))

        def add(self, x, y):
            self.total = self.total + x + y
            return self.total

        __call__ = add

        @pax.module_and_value
        def add_returning_self(self, x):
            self.total = self.total + x
            return self.total

    acc = Acc()
    acc, total = pax.module_and_value(acc.add)(1.0, 2.0)
    assert float(total) == 3.0
    acc, total = acc % (1.0, 1.0)
    assert float(acc.total) == 5.0
    acc, total = acc.add_returning_self(10.0)
    assert float(acc.total) == float(total) == 15.0


def test_module_without_call_names_the_fix():
    with pytest.raises(TypeError, match=r"module_and_value\(module.method\)"):
        pax.purecall(pax.RngSeq(seed=0), 1.0)


def test_closed_over_module_cannot_be_mutated_in_nested_pure():
    class Outer(pax.Module):
        def __init__(self):
            super().__init__()
            self.counter = Counter()

        def __call__(self, x):
            @pax.pure
            def inner(x):
                return self.counter(x)  # closed over: must be passed in instead

            return inner(x)

    with pytest.raises(ValueError, match="nested `pax.pure` call") as info:
        pax.purecall(Outer(), 1.0)
    assert "Pass the module in as an argument and return it" in str(info.value)


@pytest.mark.parametrize(
    "transform",
    [
        lambda f, x: jax.jit(f)(x),
        lambda f, x: jax.vmap(f)(jnp.stack([x, x])),
        lambda f, x: jax.lax.scan(lambda c, xi: (c, f(xi)), 0, jnp.stack([x, x])),
        lambda f, x: jax.grad(lambda xi: f(xi).sum())(x),
        lambda f, x: jax.checkpoint(f)(x),
    ],
    ids=["jit", "vmap", "scan", "grad", "checkpoint"],
)
def test_closed_over_module_mutated_inside_a_transformation_raises(transform):
    class Leaky(pax.Module):
        def __init__(self):
            super().__init__()
            self.counter = Counter()

        def __call__(self, x):
            return transform(lambda xi: self.counter(xi), x)

    with pytest.raises(ValueError, match="inside a JAX transformation") as info:
        pax.purecall(Leaky(), jnp.ones(2))
    assert "Cannot set `Counter.count`" in str(info.value)


def test_module_passed_through_scan_vmap_and_grad_works():
    @jax.jit
    def run(counter, xs):
        def body(c, x):
            c, y = pax.purecall(c, x)
            return c, y

        return jax.lax.scan(body, counter, xs)

    counter, ys = run(Counter(), jnp.arange(4.0))
    assert int(counter.count) == 4
    np.testing.assert_array_equal(ys, jnp.arange(4.0))

    lin = Linear(3, 2)
    out = jax.vmap(lambda m, x: m(x), in_axes=(None, 0))(lin, jnp.ones((5, 3)))
    assert out.shape == (5, 2)


def test_grad_through_a_module_with_an_int_counter():
    net = MLP([3, 4, 1])
    x = jnp.ones((2, 3))

    def loss_fn(model, x):
        model, y = pax.purecall(model, x)
        return jnp.sum(y**2), model

    (loss, new_net), grads = pax.value_and_grad(loss_fn, has_aux=True)(net, x)
    assert int(new_net.counter.count) == 1
    assert grads.counter.count is None
    assert grads.layers[0].weight.shape == (3, 4)

    def loss_of_arrays(w0):
        h = jax.nn.relu(x @ w0 + net.layers[0].bias)
        return jnp.sum((h @ net.layers[1].weight + net.layers[1].bias) ** 2)

    np.testing.assert_allclose(
        grads.layers[0].weight, jax.grad(loss_of_arrays)(net.layers[0].weight), rtol=1e-6
    )
    g_only, aux = pax.grad(loss_fn, has_aux=True)(net, x)
    np.testing.assert_allclose(g_only.layers[1].bias, grads.layers[1].bias)
    assert int(aux.counter.count) == 1


def test_grad_requires_a_module():
    with pytest.raises(TypeError, match="must be a module"):
        pax.grad(lambda x: x)(1.0)


def test_freeze_and_unfreeze_parameters():
    net = MLP([2, 2, 1])
    frozen = net.replace(layers=[pax.freeze_parameters(net.layers[0]), net.layers[1]])
    params = pax.select_parameters(frozen)
    assert params.layers[0].weight is None and params.layers[1].weight is not None
    states = pax.select_states(frozen)
    assert states.layers[0].weight is not None and states.counter.count is not None
    assert states.layers[1].weight is None

    def loss_fn(model):
        return jnp.sum(pax.purecall(model, jnp.ones((1, 2)))[1])

    grads = pax.grad(loss_fn)(frozen)
    assert grads.layers[0].weight is None and grads.layers[1].weight is not None
    assert "[frozen]" in frozen.summary()

    thawed = pax.unfreeze_parameters(frozen)
    assert pax.select_parameters(thawed).layers[0].weight is not None


def test_select_and_update_are_a_partition():
    net = MLP([2, 2])
    params, states = pax.select_parameters(net), pax.select_states(net)
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
    merged = pax.update_parameters(net, doubled)
    np.testing.assert_array_equal(merged.layers[0].weight, 2 * net.layers[0].weight)
    assert merged.counter.count is net.counter.count
    merged2 = pax.update_states(net, jax.tree_util.tree_map(lambda x: x + 5, states))
    assert int(merged2.counter.count) == 5
    assert merged2.layers[0].weight is net.layers[0].weight
    pax.assert_structure_equal(merged, net)


def test_assert_structure_equal_names_the_difference():
    with pytest.raises(ValueError, match="first difference"):
        pax.assert_structure_equal(MLP([2, 2]), MLP([2, 2, 2]))
    with pytest.raises(ValueError, match="static data"):
        pax.assert_structure_equal(Linear(2, 2), Linear(2, 2, name="x"))


def test_two_threads_run_pure_on_separate_modules():
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def work(tag):
        try:
            barrier.wait()
            counter = Counter()
            for _ in range(200):
                counter, _ = pax.purecall(counter, 0)
            results[tag] = int(counter.count)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {0: 200, 1: 200}


def test_scan_time_major_option():
    xs = jnp.arange(12.0).reshape(3, 4, 1)  # batch 3, time 4

    def step(counter, x):
        counter, y = pax.purecall(counter, x * 2)
        return counter, y

    counter, ys = pax.scan(step, Counter(), xs, time_major=False)
    assert int(counter.count) == 4 and ys.shape == (3, 4, 1)
    np.testing.assert_array_equal(ys, xs * 2)


def test_rng_keys():
    pax.seed_rng_key(1)
    a = pax.next_rng_key()
    pax.seed_rng_key(1)
    assert (pax.next_rng_key() == a).all()
    assert not (pax.next_rng_key() == a).all()
    with pytest.raises(RuntimeError, match="inside a JAX transformation"):
        jax.jit(lambda: pax.next_rng_key())()

    rng = pax.RngSeq(seed=0)
    rng1, k1 = pax.purecall(rng.next_rng_key)
    rng2, k2 = pax.purecall(rng1.next_rng_key)
    assert not (k1 == k2).all()
    _, k1_again = pax.purecall(rng.next_rng_key)
    assert (k1 == k1_again).all()
    _, keys = pax.purecall(rng.next_rng_key, 3)
    assert len(keys) == 3

    @jax.jit
    def draw(rng):
        return pax.purecall(rng.next_rng_key)

    rng3, k3 = draw(rng)
    assert (k3 == k1).all()
