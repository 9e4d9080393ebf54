"""Step options against references written without paxtrain (raw JAX and optax).

The EMA recurrence is checked against the parameter trajectory in
`test_train_step.py::test_ema_follows_the_formula`; gradient accumulation against paxtrain's
own full-batch step in `test_grad_accumulation_equals_the_full_batch`, and here against raw JAX.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_resume_matrix import Blobs, Net

import paxtrain as pax
from paxtrain.config.optimizer import inject_learning_rate
from paxtrain.optim import make_transformation
from paxtrain.train import TrainState, make_train_step
from paxtrain.train.trainer import model_loss


def close(actual, expected, err_msg=""):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=err_msg)


def raw_loss(params, batch):
    """`Net.loss` in raw JAX, on a dict of arrays."""
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


@pytest.mark.parametrize("accum", [pytest.param(1, marks=pytest.mark.optimized_xla), 2])
def test_a_step_and_two_accumulated_micro_batches_equal_raw_jax_on_the_full_batch(accum):
    # One batch: bitwise. Two micro-batches: a mean of two means of 8, not one mean of 16, so
    # equal up to rounding (the gradient norm differs in the last bit).
    check = np.testing.assert_array_equal if accum == 1 else close
    pax.seed_rng_key(0)
    model, tx = Net(), optax.adam(0.05)
    params = {
        "w1": model.fc1.weight, "b1": model.fc1.bias,
        "w2": model.fc2.weight, "b2": model.fc2.bias,
    }  # fmt: skip
    params = jax.tree_util.tree_map(np.array, params)  # host copies: the step donates
    opt_state = tx.init(params)

    @jax.jit  # as the train step is: XLA's fusions round differently from op-by-op
    def raw_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(raw_loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    state = TrainState.create(model, tx)
    step = make_train_step(model_loss, grad_accum_steps=accum)
    for i in range(3):
        batch = Blobs().train_batch(i)  # 16 examples: two micro-batches of 8
        params, opt_state, loss, grad_norm = raw_step(params, opt_state, batch)
        state, metrics = step(state, batch)
        check(metrics["loss"], loss)
        check(metrics["grad_norm"], grad_norm)
    got = {
        "w1": state.model.fc1.weight, "b1": state.model.fc1.bias,
        "w2": state.model.fc2.weight, "b2": state.model.fc2.bias,
    }  # fmt: skip
    for name in params:
        check(got[name], params[name], err_msg=name)


def test_adam_on_bfloat16_parameters_follows_float32_adam():
    # optim's injected hyperparameters once took the parameters' dtype: b2=0.999 became 1.0.
    params = {"w": jnp.linspace(-1.0, 1.0, 8)}
    grads = {"w": jnp.linspace(0.5, -0.3, 8)}
    low = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    tx, reference = make_transformation("adam", 0.05), optax.adam(0.05)
    state, ref_state = tx.init(low), reference.init(params)
    for _ in range(3):
        updates, state = tx.update(
            jax.tree_util.tree_map(lambda g: g.astype(jnp.bfloat16), grads), state, low
        )
        low = optax.apply_updates(low, updates)
        ref_updates, ref_state = reference.update(grads, ref_state, params)
        params = optax.apply_updates(params, ref_updates)
    assert low["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(low["w"].astype(jnp.float32), params["w"], rtol=1e-2, atol=1e-2)


def test_the_configs_injected_learning_rate_stays_float32_for_bfloat16_parameters():
    tx = inject_learning_rate("optax.adam", learning_rate=3e-4)
    rate = tx.init({"w": jnp.zeros(2, jnp.bfloat16)}).hyperparams["learning_rate"]
    assert rate.dtype == jnp.float32 and float(rate) == float(np.float32(3e-4))
