"""PAX v0.4.3's `pax.pure` promise, PAX calls that must run, the errors PAX users catch, repr.

From PAX's source: pure.py deep-copies the inputs ("we can only access a copy of the inputs"),
including a method's `self`; `module_and_value` returns `(module, value)`; base.py raises
`ValueError` for `__slots__` and class-level arrays; `Module._repr` writes `(name) Class(...)`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax


class Counter:  # a plain Python object: not a pytree
    def __init__(self):
        self.count = 0


class WithObjects(pax.Module):
    def __init__(self):
        super().__init__()
        self.counter = Counter()
        self.history = []
        self.options = {"seen": 0}
        self.register_state("steps", jnp.array(0))

    def __call__(self, x):
        self.counter.count += 1
        self.history.append(1)
        self.options["seen"] += 1
        self.steps = self.steps + 1
        return x


def test_pure_never_modifies_non_pytree_attributes_of_its_inputs():
    m = WithObjects()
    new, _ = pax.purecall(m, 1.0)
    assert (m.counter.count, m.history, m.options, int(m.steps)) == (0, [], {"seen": 0}, 0)
    assert (new.counter.count, new.history, new.options, int(new.steps)) == (1, [1], {"seen": 1}, 1)
    newer, _ = pax.purecall(new, 1.0)
    assert (new.counter.count, newer.counter.count) == (1, 2)


def test_pure_copies_attributes_of_nested_modules_and_keyword_arguments():
    outer = pax.nn.Sequential(pax.nn.Lambda(jnp.tanh))
    inner = WithObjects()

    @pax.pure
    def f(seq, *, m):
        m(1.0)
        return m

    out = f(outer, m=inner)
    assert (inner.counter.count, out.counter.count) == (0, 1)


def test_a_module_of_lists_keeps_its_jit_cache_across_pure_calls():
    traces = []

    @jax.jit
    def step(m, x):
        traces.append(1)
        return pax.purecall(m, x)

    class Lists(pax.Module):
        def __init__(self):
            super().__init__()
            self.sizes = [1, 2]

        def __call__(self, x):
            return x

    m = Lists()
    for _ in range(3):
        m, _ = step(m, 1.0)
    assert len(traces) == 1


def test_values_hashed_by_value_and_functions_are_shared_not_copied():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        width: int = 2

    class Holder(pax.Module):
        def __init__(self):
            super().__init__()
            self.config, self.act, self.sizes = Config(), jax.nn.relu, (1, 2)

        def __call__(self, x):
            return x

    m = Holder()
    new, _ = pax.purecall(m, 1.0)
    assert new.config is m.config and new.act is m.act and new.sizes is m.sizes


class SGD(pax.Module):  # PAX v0.4.3's tests/test_optim.py, an opax-era optimizer module
    def __init__(self, params, learning_rate=1e-2, momentum=0.9):
        super().__init__()
        self.momentum = momentum
        self.learning_rate = learning_rate
        self.register_state("velocity", jax.tree_util.tree_map(jnp.zeros_like, params))

    def step(self, grads, params):
        self.velocity = jax.tree_util.tree_map(
            lambda v, g: v * self.momentum + g * self.learning_rate, self.velocity, grads
        )
        return jax.tree_util.tree_map(lambda p, v: p - v, params, self.velocity)


def test_pure_on_a_bound_method_that_updates_self_returns_what_the_method_returns():
    f = pax.nn.Linear(2, 2)
    sgd = SGD(f, 0.9, 1e-4)
    new_params = pax.pure(sgd.step)(f, f)
    np.testing.assert_allclose(new_params.weight, f.weight - 0.9 * f.weight, rtol=1e-6)
    np.testing.assert_array_equal(sgd.velocity.weight, np.zeros((2, 2)))  # untouched


def test_module_and_value_on_a_bound_method_returns_the_updated_module():
    f = pax.nn.Linear(2, 2)
    sgd = SGD(f, 0.5, 0.0)
    sgd2, new_params = pax.module_and_value(sgd.step)(f, f)
    np.testing.assert_allclose(sgd2.velocity.weight, 0.5 * f.weight, rtol=1e-6)
    np.testing.assert_allclose(new_params.weight, 0.5 * f.weight, rtol=1e-6)
    np.testing.assert_array_equal(sgd.velocity.weight, np.zeros((2, 2)))


def test_pure_on_a_module_calls_it_on_a_copy():
    m = WithObjects()
    assert pax.pure(m)(2.0) == 2.0
    assert m.counter.count == 0


def test_pure_static_argnums_count_self_for_a_bound_method_as_in_pax():
    class Scaler(pax.Module):
        def scale(self, x, factor):
            assert isinstance(factor, int)  # static: not traced
            return x * factor

    out = jax.jit(pax.pure(Scaler().scale, static_argnums=2), static_argnums=1)(jnp.ones(2), 3)
    np.testing.assert_array_equal(out, [3.0, 3.0])


# ---------------------------------------------------------------- valid PAX calls that raised
@pytest.mark.parametrize("norm", ["layer", "group"])
def test_norms_take_scale_and_offset_at_call_time(norm):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)), jnp.float32)
    scale, offset = jnp.full(4, 2.0), jnp.full(4, 0.5)
    if norm == "layer":
        layer = pax.nn.LayerNorm(4, -1, False, False)
        plain = pax.nn.LayerNorm(4, -1, False, False)(x)
    else:
        layer = pax.nn.GroupNorm(2, 4, create_scale=False, create_offset=False)
        plain = layer(x)
    np.testing.assert_allclose(layer(x, scale, offset), plain * 2.0 + 0.5, rtol=1e-5, atol=1e-6)
    full_rank = jnp.full((2, 1, 4), 2.0)  # broadcast as PAX did
    np.testing.assert_allclose(layer(x, scale=full_rank), plain * 2.0, rtol=1e-5, atol=1e-6)


def test_a_norm_with_its_own_scale_refuses_one_at_call_time_as_pax():
    with pytest.raises(ValueError, match="cannot pass `scale` at call time"):
        pax.nn.LayerNorm(4, -1, True, True)(jnp.ones((1, 4)), jnp.ones(4))


def test_lambda_spellings():
    named = pax.nn.Lambda(jax.nn.relu, "act")
    assert named.name == "act"
    assert pax.nn.Lambda(func=jnp.tanh).func is jnp.tanh
    add = pax.nn.Lambda(jnp.add)
    np.testing.assert_array_equal(add(jnp.ones(2), jnp.ones(2)), [2.0, 2.0])


def test_pooling_spellings():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    expected = [[5.0, 7.0], [13.0, 15.0]]
    pooled = pax.nn.max_pool(value=x, window_shape=2, strides=2, padding="VALID")
    np.testing.assert_array_equal(pooled[0, :, :, 0], expected)
    # channel_axis=None: every axis but the batch one is pooled (PAX's `_infer_shape`).
    y = jnp.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_array_equal(pax.nn.max_pool(y, 2, 2, "VALID", channel_axis=None)[0], expected)
    np.testing.assert_array_equal(
        pax.nn.avg_pool(value=y, window_shape=2, strides=2, padding="VALID", channel_axis=None)[0],
        [[2.5, 4.5], [10.5, 12.5]],
    )


def test_sequential_replace_modules():
    n = pax.nn.Sequential(pax.nn.Linear(2, 3))
    n2 = n.replace(modules=n.modules + (pax.nn.Linear(3, 1),))
    assert len(n2) == 2 and n2(jnp.ones((1, 2))).shape == (1, 1)
    assert len(n) == 1


def test_submodule_assigned_in_add_parameters_is_a_submodule():
    class Net(pax.Module):
        def __init__(self):
            super().__init__()
            with self.add_parameters():
                self.w = jnp.zeros(2)
                self.fc = pax.nn.Linear(2, 2)

    net = Net()
    assert net.submodules() == [net.fc]
    assert len(jax.tree_util.tree_leaves(net.parameters())) == 3


def test_nested_add_parameters_and_add_states():
    """issue 21, item 7: this raised `TypeError: 'str' object is not callable`."""

    class Net(pax.Module):
        def __init__(self):
            super().__init__()
            with self.add_parameters():
                self.w = jnp.zeros(2)
                with self.add_states():
                    self.count = jnp.array(0)
                self.b = jnp.zeros(1)

    net = Net()
    params = pax.select_parameters(net)
    assert params.count is None and params.w is not None and params.b is not None
    assert pax.select_states(net).count is not None


# ---------------------------------------------------------------------- errors PAX users catch
def test_slots_and_class_level_arrays_raise_value_error_as_in_pax():
    with pytest.raises(ValueError, match="__slots__"):

        class Slotted(pax.Module):
            __slots__ = ("a",)

    with pytest.raises(ValueError, match="at class level"):

        class ClassArray(pax.Module):
            w = jnp.zeros(2)

    with pytest.raises(TypeError, match="at class level"):  # still a TypeError too

        class ClassModule(pax.Module):
            fc = pax.nn.Linear(1, 1)


def test_linear_input_of_the_wrong_size_raises_value_error():
    with pytest.raises(ValueError, match="the input's last axis has 4 features"):
        pax.nn.Linear(3, 2)(jnp.ones((1, 4)))


def test_module_and_value_of_a_non_module_raises_value_error():
    with pytest.raises(ValueError, match="module_and_value expects a module"):
        pax.module_and_value(3)


# ------------------------------------------------------------------------------ name in repr
def test_name_is_shown_where_pax_showed_it():
    assert (
        repr(pax.nn.Linear(2, 3, name="fc1")) == "(fc1) Linear(in_dim=2, out_dim=3, with_bias=True)"
    )
    summary = pax.nn.Sequential(pax.nn.Linear(2, 3, name="fc1")).summary()
    assert "(fc1) Linear(in_dim=2" in summary
