"""Module declaration, immutability, tree operations, display, pickling."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_modules import MLP, Counter, Linear

import paxtrain as pax


def test_module_is_a_pytree_of_declared_arrays_only():
    net = MLP([2, 3, 1])
    leaves = jax.tree_util.tree_leaves(net)
    assert len(leaves) == 5  # 2 x (weight, bias) + counter
    assert all(isinstance(x, jax.Array) for x in leaves)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(net)[0]]
    assert ".layers[0].weight" in paths and ".counter.count" in paths


def test_static_attributes_are_tree_definition_data():
    a, b = Linear(2, 3), Linear(2, 4)
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(Linear(2, 3))


def test_unflatten_round_trip_keeps_attributes_and_declarations():
    net = MLP([2, 3, 1])
    leaves, treedef = jax.tree_util.tree_flatten(net)
    back = jax.tree_util.tree_unflatten(treedef, [x + 1 for x in leaves])
    assert back.sizes == (2, 3, 1) and type(back.layers[1]) is Linear
    np.testing.assert_array_equal(back.layers[0].weight, net.layers[0].weight + 1)
    assert jax.tree_util.tree_structure(back) == treedef


def test_undeclared_array_is_rejected_with_the_fix():
    class Bad(pax.Module):
        def __init__(self):
            super().__init__()
            self.weight = jnp.zeros(3)

    with pytest.raises(ValueError, match=r'register_parameter\("weight", value\)'):
        Bad()


def test_add_parameters_and_add_states_declare_arrays():
    class M(pax.Module):
        def __init__(self):
            super().__init__()
            with self.add_parameters():
                self.w = jnp.ones(2)
            with self.add_states():
                self.s = jnp.zeros(2)

    m = M()
    assert m.parameters().w is not None and m.parameters().s is None
    assert pax.select_states(m).s is not None and pax.select_states(m).w is None


def test_submodules_mixed_with_arrays_are_rejected():
    class Bad(pax.Module):
        def __init__(self):
            super().__init__()
            self.items = [Linear(1, 1), jnp.zeros(1)]

    with pytest.raises(ValueError, match="mixes submodules"):
        Bad()


def test_registering_the_same_name_as_two_kinds_fails():
    class Bad(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("x", jnp.zeros(1))
            self.register_state("x", jnp.zeros(1))

    with pytest.raises(ValueError, match="already registered as a parameter"):
        Bad()


def test_assignment_outside_pure_raises_naming_module_attribute_and_fix():
    lin = Linear(2, 2)
    with pytest.raises(ValueError) as info:
        lin.weight = jnp.zeros((2, 2))
    msg = str(info.value)
    assert "Cannot set `Linear.weight`" in msg
    assert "pax.module_and_value" in msg and "pax.pure" in msg
    with pytest.raises(ValueError, match="immutable"):
        del lin.bias
    with pytest.raises(ValueError, match="immutable"):
        lin.register_state("other", jnp.zeros(1))


def test_reserved_attributes_cannot_be_assigned():
    class Bad(pax.Module):
        def __init__(self):
            super().__init__()
            self.training = False

    with pytest.raises(AttributeError, match=r"\.eval\(\)"):
        Bad()


def test_name_training_train_eval():
    lin = Linear(2, 2, name="fc")
    assert lin.name == "fc" and lin.training
    net = MLP([2, 2]).eval()
    assert not net.training and not net.layers[0].training and not net.counter.training
    assert net.train().layers[0].training
    assert pax.enable_eval_mode(net.train()).counter.training is False


def test_copy_makes_new_nodes_sharing_arrays():
    net = MLP([2, 2])
    other = net.copy()
    assert other is not net and other.layers[0] is not net.layers[0]
    assert other.layers[0].weight is net.layers[0].weight


def test_replace_keeps_declarations_and_leaves_original_alone():
    lin = Linear(2, 2)
    new = lin.replace(bias=jnp.ones(2))
    np.testing.assert_array_equal(new.bias, jnp.ones(2))
    np.testing.assert_array_equal(lin.bias, jnp.zeros(2))
    assert new.parameters().bias is not None
    with pytest.raises(ValueError, match="immutable"):
        new.bias = jnp.zeros(2)


def test_replace_node_swaps_by_identity():
    net = MLP([2, 3, 1])
    new_layer = Linear(2, 3)
    swapped = net.replace_node(net.layers[0], new_layer)
    assert swapped.layers[0] is new_layer and net.layers[0] is not new_layer
    zeros = jnp.zeros_like(net.layers[1].bias)
    assert swapped.replace_node(swapped.layers[1].bias, zeros).layers[1].bias is zeros
    with pytest.raises(ValueError, match="not a submodule or array"):
        net.replace_node(Linear(1, 1), new_layer)


def test_apply_visits_every_module_children_first():
    order = []

    def visit(m):
        order.append(type(m).__name__)
        return m

    MLP([2, 2, 2]).apply(visit)
    assert order == ["Linear", "Linear", "Counter", "MLP"]


def test_submodules_lists_direct_children():
    net = MLP([2, 2, 2])
    assert [type(m).__name__ for m in net.submodules()] == ["Linear", "Linear", "Counter"]


def test_repr_and_summary():
    pax.seed_rng_key(0)
    net = MLP([2, 3, 1])
    assert repr(net.layers[0]) == "Linear(in_dim=2, out_dim=3)"
    assert repr(Linear(1, 1, name="fc")) == "(fc) Linear(in_dim=1, out_dim=1)"
    assert net.summary() == "\n".join(
        [
            "MLP(sizes=(2, 3, 1))",
            "├── layers[0]: Linear(in_dim=2, out_dim=3)  weight f32[2,3] bias f32[3]",
            "├── layers[1]: Linear(in_dim=3, out_dim=1)  weight f32[3,1] bias f32[1]",
            "└── counter: Counter()  count i32[]",
        ]
    )


def test_scan_bugs_rejects_shared_modules_and_arrays():
    class Shared(pax.Module):
        def __init__(self, a, b):
            super().__init__()
            self.a, self.b = a, b

    lin = Linear(2, 2)
    with pytest.raises(ValueError, match=r"`Shared.a` and `Shared.b` are the same Linear"):
        Shared(lin, lin).scan_bugs()

    class TiedWeights(pax.Module):
        def __init__(self):
            super().__init__()
            w = jnp.ones(2)
            self.register_parameter("w1", w)
            self.register_parameter("w2", w)

    with pytest.raises(ValueError, match="same array object"):
        TiedWeights().scan_bugs()
    net = MLP([2, 2])
    assert net.scan_bugs() is net


def test_pickle_and_deepcopy_round_trip():
    net = pax.freeze_parameters(MLP([2, 3, 1]))
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert jax.tree_util.tree_structure(clone) == jax.tree_util.tree_structure(net)
        for a, b in zip(jax.tree_util.tree_leaves(clone), jax.tree_util.tree_leaves(net)):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="immutable"):
            clone.sizes = (1,)
        clone, _ = pax.purecall(clone, jnp.ones((1, 2)))
        assert int(clone.counter.count) == 1


def test_counter_state_round_trips_through_jit():
    counter = Counter()

    @jax.jit
    def step(c, x):
        return pax.purecall(c, x)

    for _ in range(3):
        counter, _ = step(counter, 1.0)
    assert int(counter.count) == 3
