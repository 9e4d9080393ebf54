"""`paxtrain.optim`: the Optimizer module, its factories, learning rate and clipping."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from core_modules import SeededLinear

import paxtrain as pax
import paxtrain.optim
from paxtrain.optim import Optimizer, adam, adamw, make_transformation, sgd


class Net(pax.Module):
    """Two layers and an integer state."""

    def __init__(self):
        super().__init__()
        self.first = SeededLinear(3, 4, seed=0)
        self.second = SeededLinear(4, 1, seed=1)
        self.register_state("calls", jnp.array(0))

    def __call__(self, x):
        self.calls = self.calls + 1
        return self.second(jnp.tanh(self.first(x)))


X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)


def loss(model, x=X):
    _, y = pax.purecall(model, x)
    return jnp.sum(y**2)


def as_dict(model):
    return {
        name: {"weight": getattr(model, name).weight, "bias": getattr(model, name).bias}
        for name in ("first", "second")
    }


def copy_leaves(tree):
    return [np.array(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_leaves_equal(tree, leaves):
    for x, y in zip(jax.tree_util.tree_leaves(tree), leaves, strict=True):
        np.testing.assert_array_equal(x, y)


def test_step_matches_optax_on_plain_arrays():
    model = Net()
    opt = Optimizer(model, optax.adam(0.1))
    raw_params = as_dict(model)
    raw_state = optax.adam(0.1).init(raw_params)
    for _ in range(3):
        grads = pax.grad(loss)(model)
        model, opt = opt.step(grads, model)
        raw_updates, raw_state = optax.adam(0.1).update(as_dict(grads), raw_state, raw_params)
        raw_params = optax.apply_updates(raw_params, raw_updates)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), as_dict(model), raw_params
    )
    assert int(optax.tree.get(opt.opt_state, "count")) == 3


def test_inputs_are_not_modified():
    model = Net()
    opt = Optimizer(model, optax.adam(0.5))
    model_before, opt_before = copy_leaves(model), copy_leaves(opt)
    new_model, new_opt = opt.step(pax.grad(loss)(model), model)
    assert_leaves_equal(model, model_before)
    assert_leaves_equal(opt, opt_before)
    assert int(optax.tree.get(opt.opt_state, "count")) == 0
    assert not np.array_equal(new_model.first.weight, model.first.weight)
    assert new_opt is not opt and new_model is not model


def test_frozen_parameters_and_states_are_bitwise_unchanged():
    model = Net()
    model = model.replace(first=pax.freeze_parameters(model.first))
    model, _ = pax.purecall(model, X)  # calls == 1
    opt = Optimizer(model, optax.adam(0.1))
    grads = pax.grad(loss)(model)
    assert grads.first.weight is None

    new_model, new_opt = opt.step(grads, model)
    assert new_model.first.weight is model.first.weight
    assert new_model.first.bias is model.first.bias
    assert new_model.calls is model.calls and int(new_model.calls) == 1
    assert not np.array_equal(new_model.second.weight, model.second.weight)
    mu = optax.tree.get(new_opt.opt_state, "mu")
    assert mu.first.weight is None and mu.second.weight is not None


def test_learning_rate_of_a_schedule_is_read_from_the_state():
    schedule = optax.linear_schedule(1.0, 0.0, transition_steps=4)
    model = Net()
    opt = sgd(schedule)(model)
    assert float(opt.learning_rate) == 1.0
    for k in range(3):
        grads = pax.grad(loss)(model)
        new_model, opt = opt.step(grads, model)
        lr = float(schedule(k))
        assert float(opt.learning_rate) == pytest.approx(lr)
        # The reported rate is the one the update used: w' = w - lr * g.
        np.testing.assert_allclose(
            new_model.second.weight, model.second.weight - lr * grads.second.weight, rtol=1e-6
        )
        model = new_model
    assert Optimizer(model, optax.sgd(0.1)).learning_rate is None


def test_clip_grad_norm_clips_the_update():
    model = Net()
    grads = jax.tree_util.tree_map(lambda g: 100.0 * g, pax.grad(loss)(model))
    grad_norm = float(optax.tree.norm(grads))
    assert grad_norm > 1.0

    def update_norm(opt):
        new_model, _ = opt.step(grads, model)
        delta = jax.tree_util.tree_map(
            jnp.subtract, pax.select_parameters(new_model), pax.select_parameters(model)
        )
        return float(optax.tree.norm(delta))

    assert update_norm(sgd(1.0)(model)) == pytest.approx(grad_norm, rel=1e-5)
    assert update_norm(sgd(1.0, clip_grad_norm=0.5)(model)) == pytest.approx(0.5, rel=1e-5)
    # A norm below the threshold is left alone.
    assert update_norm(sgd(1.0, clip_grad_norm=10 * grad_norm)(model)) == pytest.approx(
        grad_norm, rel=1e-5
    )


@pytest.mark.parametrize(
    ("factory", "reference", "kwargs"),
    [
        (sgd, optax.sgd, {"momentum": 0.9}),
        (adam, optax.adam, {"b1": 0.8}),
        (adamw, optax.adamw, {"weight_decay": 0.1}),
    ],
)
def test_factories_match_optax(factory, reference, kwargs):
    model = Net()
    opt = factory(0.05, **kwargs)(model)
    raw_params = as_dict(model)
    raw_state = reference(0.05, **kwargs).init(raw_params)
    for _ in range(3):
        grads = pax.grad(loss)(model)
        model, opt = opt.step(grads, model)
        raw_updates, raw_state = reference(0.05, **kwargs).update(
            as_dict(grads), raw_state, raw_params
        )
        raw_params = optax.apply_updates(raw_params, raw_updates)
    # Injected hyperparameters are float32 arrays, not Python floats: last-bit differences.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        as_dict(model),
        raw_params,
    )
    assert float(opt.learning_rate) == pytest.approx(0.05)


def test_step_under_jit_equals_eager():
    model = Net()
    opt = adamw(0.1, clip_grad_norm=1.0)(model)
    grads = pax.grad(loss)(model)
    eager_model, eager_opt = opt.step(grads, model)
    jit_model, jit_opt = jax.jit(lambda o, g, m: o.step(g, m))(opt, grads, model)
    # Compiled and eager arithmetic may differ in the last bit.
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        (jit_model, jit_opt),
        (eager_model, eager_opt),
    )


def test_structure_change_after_building_is_explained():
    model = Net()
    opt = Optimizer(model, optax.adam(0.1))
    frozen = model.replace(first=pax.freeze_parameters(model.first))
    with pytest.raises(ValueError, match="no longer have the structure"):
        opt.step(pax.grad(loss)(frozen), frozen)


def test_misuse_messages():
    with pytest.raises(TypeError, match="expects an optax GradientTransformation"):
        Optimizer(Net(), optax.adam)
    with pytest.raises(ValueError, match="Unknown optimizer 'lamb'"):
        make_transformation("lamb", 0.1)


def test_docstring_examples_run():
    result = doctest.testmod(paxtrain.optim, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
