"""Dropout and EMA: state threaded through `pax.purecall` and `jax.jit`; state in Sequential."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn


def test_dropout_masks_differ_between_successive_training_calls():
    drop = nn.Dropout(0.5, rng_key=jax.random.PRNGKey(0))
    x = jnp.arange(1.0, 65.0)
    drop1, y1 = pax.purecall(drop, x)
    drop2, y2 = pax.purecall(drop1, x)
    assert not np.array_equal(y1, y2)
    assert not np.array_equal(drop1.rng_key, drop.rng_key)
    for y in (y1, y2):  # every element is dropped or scaled by 1 / (1 - rate)
        kept = np.asarray(y) != 0
        np.testing.assert_allclose(np.asarray(y)[kept], 2 * np.asarray(x)[kept])
        assert 0 < kept.sum() < 64
    _, again = pax.purecall(drop, x)  # the same key gives the same mask
    np.testing.assert_array_equal(again, y1)


def test_dropout_keeps_the_expected_fraction():
    drop = nn.Dropout(0.25, rng_key=jax.random.PRNGKey(1))
    _, y = pax.purecall(drop, jnp.ones(20_000))
    np.testing.assert_allclose(np.mean(np.asarray(y) != 0), 0.75, atol=0.01)
    np.testing.assert_allclose(np.mean(np.asarray(y)), 1.0, atol=0.02)


def test_dropout_is_the_identity_in_eval_mode_and_at_rate_zero():
    x = jnp.arange(4.0)
    drop = nn.Dropout(0.9).eval()
    np.testing.assert_array_equal(drop(x), x)
    new_drop, y = pax.purecall(drop, x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(new_drop.rng_key, drop.rng_key)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    with pytest.raises(ValueError, match="0 <= rate < 1"):
        nn.Dropout(1.0)


def test_dropout_under_jit_threads_its_key_in_and_out():
    traces = []

    @jax.jit
    def step(drop, x):
        traces.append(1)
        return pax.purecall(drop, x)

    drop = nn.Dropout(0.5, rng_key=jax.random.PRNGKey(0))
    x = jnp.arange(1.0, 65.0)
    drop1, y1 = step(drop, x)
    drop2, y2 = step(drop1, x)
    assert not np.array_equal(y1, y2)
    assert len(traces) == 1  # the returned module has the input's structure: no retrace
    expected_key, mask_key = jax.random.split(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(drop1.rng_key, expected_key)
    keep = ~jax.random.bernoulli(mask_key, 0.5, x.shape)  # PAX: the mask marks dropped ones
    np.testing.assert_allclose(y1, np.where(keep, 2 * x, 0.0))
    eager_drop1, eager_y1 = pax.purecall(drop, x)
    np.testing.assert_array_equal(eager_y1, y1)


def test_stateful_layers_inside_a_sequential_update_under_purecall_and_jit():
    model = nn.Linear(3, 3) >> nn.BatchNorm(3) >> nn.Dropout(0.5) >> nn.Linear(3, 1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)

    new_model, y = jax.jit(pax.purecall)(model, x)
    hidden = model[0](x)
    np.testing.assert_allclose(new_model[1].ema_mean.averages, hidden.mean(0), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(new_model[2].rng_key, model[2].rng_key)
    np.testing.assert_array_equal(model[1].ema_mean.averages, np.zeros(3))

    # In eval mode the chain is deterministic and uses the running statistics.
    frozen = new_model.eval()
    bn = frozen[1]
    mean, var = bn.ema_mean.averages, bn.ema_var.averages
    normed = (hidden - mean) / jnp.sqrt(var + bn.eps) * bn.scale + bn.offset
    np.testing.assert_allclose(frozen(x), frozen[3](normed), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("debias", [False, True])
def test_ema_matches_the_formula_on_a_pytree(debias):
    """PAX v0.4.3's EMA: `debias` ignores the initial value (the first input replaces it)."""
    decay = 0.8
    initial = {"a": jnp.array([1.0, -1.0]), "b": jnp.array(5.0)}
    values = [{"a": jnp.array([2.0 * t, t]), "b": jnp.array(float(t))} for t in range(1, 5)]
    ema = nn.EMA(initial, decay, debias)
    step = jax.jit(pax.purecall)

    expected = jax.tree_util.tree_map(np.asarray, values[0] if debias else initial)
    for value in values:
        ema, average = step(ema, value)
        expected = jax.tree_util.tree_map(
            lambda m, x: decay * m + (1 - decay) * np.asarray(x), expected, value
        )
        for key in ("a", "b"):
            np.testing.assert_allclose(average[key], expected[key], rtol=1e-5)
            np.testing.assert_allclose(ema.averages[key], expected[key], rtol=1e-5)
    assert (ema.debias is None) == (not debias)


def test_ema_in_eval_mode_returns_the_averages_unchanged():
    ema = nn.EMA(jnp.array([1.0, 2.0]), 0.5, debias=True).eval()
    new_ema, average = pax.purecall(ema, jnp.array([3.0, 4.0]))
    np.testing.assert_array_equal(average, [1.0, 2.0])
    np.testing.assert_array_equal(new_ema.averages, [1.0, 2.0])
    assert float(new_ema.debias) == 0.0
