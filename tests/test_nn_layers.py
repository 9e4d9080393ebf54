"""Linear, Embed, initializers, Identity, Lambda, Sequential and `>>`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn


def test_linear_matches_numpy_and_jit():
    layer = nn.Linear(3, 4, b_init=nn.initializers.truncated_normal(1.0))
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    expected = x @ np.asarray(layer.weight) + np.asarray(layer.bias)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(layer, x), expected, rtol=1e-5, atol=1e-6)
    assert layer.weight.shape == (3, 4) and layer.bias.shape == (4,)


def test_linear_without_bias_has_one_parameter():
    layer = nn.Linear(3, 2, with_bias=False, w_init=nn.initializers.ones)
    assert layer.bias is None
    assert len(jax.tree_util.tree_leaves(layer)) == 1
    np.testing.assert_allclose(layer(jnp.array([1.0, 2.0, 3.0])), [6.0, 6.0])


def test_default_weight_init_has_variance_one_over_fan_in():
    weight = nn.Linear(400, 300, rng_key=jax.random.PRNGKey(0)).weight
    np.testing.assert_allclose(np.var(np.asarray(weight)), 1 / 400, rtol=0.05)
    np.testing.assert_allclose(np.mean(np.asarray(weight)), 0.0, atol=1e-3)


def test_rng_key_makes_initialization_reproducible():
    key = jax.random.PRNGKey(7)
    a, b = nn.Linear(2, 3, rng_key=key), nn.Linear(2, 3, rng_key=key)
    np.testing.assert_array_equal(a.weight, b.weight)
    pax.seed_rng_key(3)
    c = nn.Linear(2, 3)
    pax.seed_rng_key(3)
    np.testing.assert_array_equal(c.weight, nn.Linear(2, 3).weight)
    assert not np.array_equal(c.weight, nn.Linear(2, 3).weight)


def test_identically_configured_layers_share_a_tree_structure():
    # Initializers are not stored, so they cannot make two structures differ (and retrace jit).
    def structure(m):
        return jax.tree_util.tree_structure(m)

    assert structure(nn.Linear(3, 4)) == structure(nn.Linear(3, 4))
    assert structure(nn.LSTM(3, 4)) == structure(nn.LSTM(3, 4))
    assert structure(nn.Linear(3, 4)) != structure(nn.Linear(3, 4, with_bias=False))


def test_embed_looks_up_rows_and_marks_bad_ids_with_nan():
    embed = nn.Embed(5, 3)
    ids = np.array([[0, 4], [2, 2]])
    np.testing.assert_array_equal(embed(ids), np.asarray(embed.weight)[ids])
    np.testing.assert_array_equal(
        jax.jit(lambda m, i: m(i))(embed, ids), np.asarray(embed.weight)[ids]
    )
    assert np.isnan(np.asarray(embed(jnp.array([5])))).all()


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (nn.Linear(3, 4), "Linear(in_dim=3, out_dim=4, with_bias=True)"),
        (nn.Linear(3, 4, name="head"), "(head) Linear(in_dim=3, out_dim=4, with_bias=True)"),
        (nn.Embed(10, 4), "Embed(vocab_size=10, embed_dim=4)"),
        (
            nn.Conv1D(3, 8, 5, stride=2, padding="VALID"),
            "Conv1D(in_features=3, out_features=8, kernel_shape=(5,), stride=(2,), rate=(1,), "
            "padding='VALID', feature_group_count=1, with_bias=True, data_format='NWC')",
        ),
        (
            nn.Conv2DTranspose(4, 2, 3, feature_group_count=2, data_format="NCHW"),
            "Conv2DTranspose(in_features=4, out_features=2, kernel_shape=(3, 3), stride=(1, 1), "
            "rate=(1, 1), padding='SAME', feature_group_count=2, with_bias=True, "
            "data_format='NCHW')",
        ),
        (nn.LayerNorm(4), "LayerNorm(num_channels=4, axis=(-1,), eps=1e-05)"),
        (nn.RMSNorm(4), "RMSNorm(num_features=4, axis=(-1,), eps=1e-05)"),
        (
            nn.GroupNorm(2, 4),
            "GroupNorm(groups=2, num_channels=4, data_format='channels_last', eps=1e-05)",
        ),
        (
            nn.BatchNorm2D(3),
            "BatchNorm2D(num_channels=3, decay_rate=0.9, data_format='NHWC', eps=1e-05)",
        ),
        (nn.Dropout(0.1), "Dropout(dropout_rate=0.1)"),
        (nn.EMA(jnp.zeros(2), 0.9), "EMA(decay_rate=0.9)"),
        (
            nn.MultiHeadAttention(2, 4),
            "MultiHeadAttention(num_heads=2, key_size=4, value_size=4, model_dim=8, causal=False, "
            "implementation=None)",
        ),
        (nn.LSTM(3, 4), "LSTM(input_dim=3, hidden_dim=4, forget_gate_bias=0.0)"),
        (nn.GRU(3, 4), "GRU(input_dim=3, hidden_dim=4)"),
        (nn.VanillaRNN(3, 4), "VanillaRNN(input_dim=3, hidden_dim=4, activation=tanh)"),
        (nn.Lambda(jax.nn.relu), "Lambda(fn=relu)"),
        (nn.Identity(), "Identity()"),
    ],
)
def test_repr_shows_sizes(layer, expected):
    assert repr(layer) == expected


def test_summary_shows_submodule_sizes():
    summary = nn.Sequential(nn.Linear(2, 3), jax.nn.relu).summary()
    assert (
        "layers[0]: Linear(in_dim=2, out_dim=3, with_bias=True)  weight f32[2,3] bias f32[3]"
        in summary
    )
    assert "layers[1]: Lambda(fn=relu)" in summary


def _mlp():
    return nn.Sequential(nn.Linear(2, 3), jax.nn.relu, nn.Linear(3, 1))


def test_sequential_chains_layers():
    model = _mlp()
    x = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    w1, b1 = np.asarray(model[0].weight), np.asarray(model[0].bias)
    w2, b2 = np.asarray(model[2].weight), np.asarray(model[2].bias)
    expected = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(model, x), expected, rtol=1e-5, atol=1e-6)
    assert nn.Sequential()(x) is x


def test_sequential_indexing_slicing_and_set():
    model = _mlp()
    assert model[0] is model.layers[0] and model[-1] is model.layers[2]
    tail = model[1:]
    assert isinstance(tail, nn.Sequential) and len(tail) == 2 and tail[1] is model[2]
    assert [type(m) for m in model] == [nn.Linear, nn.Lambda, nn.Linear]

    new_last = nn.Linear(3, 5)
    changed = model.set(-1, new_last)
    assert changed[2] is new_last and changed[0] is model[0]
    assert model[2].out_dim == 1  # the original is untouched
    assert changed(jnp.ones((1, 2))).shape == (1, 5)
    assert isinstance(model.set(1, jnp.tanh)[1], nn.Lambda)
    with pytest.raises(IndexError):
        model.set(3, nn.Identity())


def test_rshift_builds_and_extends_sequentials():
    a, b, c = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1)
    ab = a >> b
    assert isinstance(ab, nn.Sequential) and ab.layers == (a, b)
    assert (ab >> c).layers == (a, b, c)
    assert (a >> (b >> c)).layers == (a, b, c)  # associative
    with_fn = a >> jax.nn.relu
    assert isinstance(with_fn[1], nn.Lambda) and with_fn[1].fn is jax.nn.relu

    class Plain(pax.Module):  # a user module without the Chainable mixin
        def __call__(self, x):
            return 2 * x

    plain = Plain()
    chained = plain >> nn.Sequential(nn.Identity())  # via Sequential.__rrshift__
    assert chained.layers[0] is plain
    np.testing.assert_allclose(chained(jnp.ones(2)), [2.0, 2.0])
    assert (jnp.negative >> nn.Sequential(a))[0].fn is jnp.negative


def test_sequential_rejects_non_callables():
    with pytest.raises(TypeError, match="must be modules or functions"):
        nn.Sequential(nn.Linear(2, 2), 3)
