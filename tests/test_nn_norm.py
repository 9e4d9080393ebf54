"""LayerNorm, RMSNorm, GroupNorm and BatchNorm against their NumPy definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn

RNG = np.random.default_rng(0)
EPS = 1e-5


def _randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _with_random_affine(norm):
    n = norm.scale.shape[0]
    offset = None if norm.offset is None else jnp.asarray(_randn(n))
    return norm.replace(scale=jnp.asarray(1 + _randn(n)), offset=offset)


def _standardize(x, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS)


@pytest.mark.parametrize("axis", [-1, (-2, -1)])
def test_layer_norm_matches_numpy(axis):
    norm = _with_random_affine(nn.LayerNorm(4, axis=axis))
    x = 3 * _randn(2, 3, 4) + 1
    axes = axis if isinstance(axis, tuple) else (axis,)
    expected = _standardize(x, axes) * np.asarray(norm.scale) + np.asarray(norm.offset)
    np.testing.assert_allclose(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_layer_norm_without_scale_and_offset_and_under_jit():
    norm = nn.LayerNorm(4, create_scale=False, create_offset=False)
    assert norm.scale is None and norm.offset is None and jax.tree_util.tree_leaves(norm) == []
    x = _randn(2, 3, 4)
    np.testing.assert_allclose(
        jax.jit(lambda m, x: m(x))(norm, x), _standardize(x, (-1,)), rtol=1e-5, atol=1e-5
    )


def test_rms_norm_matches_numpy():
    norm = _with_random_affine(nn.RMSNorm(4))
    assert norm.offset is None
    x = _randn(2, 3, 4) + 2
    rms = np.sqrt((x**2).mean(-1, keepdims=True) + EPS)
    np.testing.assert_allclose(norm(x), x / rms * np.asarray(norm.scale), rtol=1e-5, atol=1e-5)


def _numpy_group_norm(x, groups, scale, offset):
    """x [N, H, W, C], channels split into `groups` contiguous groups."""
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    y = _standardize(grouped, (1, 2, 4)).reshape(x.shape)
    return y * scale + offset


def test_group_norm_matches_numpy():
    norm = _with_random_affine(nn.GroupNorm(2, 4))
    x = _randn(2, 3, 3, 4) * np.array([1.0, 5.0, 0.5, 2.0], np.float32)
    expected = _numpy_group_norm(x, 2, np.asarray(norm.scale), np.asarray(norm.offset))
    np.testing.assert_allclose(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_group_norm_channels_first_and_one_group_per_channel():
    norm = _with_random_affine(nn.GroupNorm(4, 4, data_format="channels_first"))
    x = _randn(2, 4, 3, 3)
    expected = _numpy_group_norm(
        np.moveaxis(x, 1, -1), 4, np.asarray(norm.scale), np.asarray(norm.offset)
    )
    np.testing.assert_allclose(norm(x), np.moveaxis(expected, -1, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"num_channels \(4\) must be divisible by groups \(3\)"):
        nn.GroupNorm(3, 4)


def test_batch_norm_training_uses_batch_statistics_and_updates_running_ones():
    bn = _with_random_affine(nn.BatchNorm(4, decay_rate=0.8))  # [C] shapes (1D/2D: PAX's)
    x = 2 * _randn(6, 4) + 3
    new_bn, y = pax.purecall(bn, x)
    expected = _standardize(x, (0,)) * np.asarray(bn.scale) + np.asarray(bn.offset)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # As in PAX (debiased EMA modules), the first training call sets the running statistics.
    np.testing.assert_allclose(new_bn.ema_mean.averages, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_bn.ema_var.averages, x.var(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bn.ema_mean.averages, np.zeros(4))  # the input is untouched

    x2 = x[::-1] * 2
    newer_bn, _ = pax.purecall(new_bn, x2)
    np.testing.assert_allclose(
        newer_bn.ema_mean.averages, 0.8 * x.mean(0) + 0.2 * x2.mean(0), rtol=1e-5
    )


def test_batch_norm_eval_uses_running_statistics_and_changes_nothing():
    bn = nn.BatchNorm(3, data_format="NC...")  # [C] shapes (BatchNorm2D keeps PAX's)
    bn = bn.replace(
        ema_mean=bn.ema_mean.replace(averages=jnp.array([1.0, 2.0, 3.0])),
        ema_var=bn.ema_var.replace(averages=jnp.array([4.0, 1.0, 0.25])),
    )
    bn = _with_random_affine(bn).eval()
    x = _randn(2, 3, 2, 2)
    new_bn, y = pax.purecall(bn, x)
    mean = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    var = np.array([4.0, 1.0, 0.25]).reshape(1, 3, 1, 1)
    scale, offset = (np.asarray(p).reshape(1, 3, 1, 1) for p in (bn.scale, bn.offset))
    expected = (x - mean) / np.sqrt(var + EPS) * scale + offset
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn(x), expected, rtol=1e-5, atol=1e-5)  # no purecall needed
    for a, b in zip(jax.tree_util.tree_leaves(new_bn), jax.tree_util.tree_leaves(bn)):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_train_step_under_jit_with_gradients():
    bn = nn.BatchNorm(3)  # [C] shapes (BatchNorm2D keeps PAX's [1, 1, 1, C])
    x = _randn(2, 2, 2, 3) + 1

    @jax.jit
    def step(bn, x):
        def loss_fn(bn, x):
            bn, y = pax.purecall(bn, x)
            return jnp.sum(y * jnp.arange(3.0)), bn

        (loss, bn), grads = pax.value_and_grad(loss_fn, has_aux=True)(bn, x)
        return bn, grads

    new_bn, grads = step(bn, x)
    np.testing.assert_allclose(new_bn.ema_mean.averages, x.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    # d/d offset of sum(y * c) is c times the number of positions; states get no gradient.
    np.testing.assert_allclose(grads.offset, 8 * np.arange(3.0), rtol=1e-5)
    assert jax.tree_util.tree_leaves(grads.ema_mean) == []


def test_batch_norm_training_call_outside_purecall_explains_the_fix():
    with pytest.raises(ValueError, match="pax.module_and_value"):
        nn.BatchNorm1D(3)(jnp.ones((2, 3)))


def test_batch_norm_checks_input_rank():
    with pytest.raises(
        ValueError, match="BatchNorm1D expects inputs of rank 2 or 3.*Use BatchNorm2D"
    ):
        nn.BatchNorm1D(3).eval()(jnp.ones((2, 2, 2, 3)))
    with pytest.raises(ValueError, match="BatchNorm2D expects inputs of rank 4"):
        nn.BatchNorm2D(3).eval()(jnp.ones((2, 3)))
