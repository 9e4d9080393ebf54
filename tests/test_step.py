"""The optimizer module and the jitted train step with its options."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.optim import Optimizer, make_schedule, make_transformation
from paxtrain.train import TrainState, make_eval_step, make_train_step
from paxtrain.utils import build_update_fn


class Regression(pax.Module):
    """A linear model with a call counter (an int state) and a BatchNorm-free forward."""

    def __init__(self, in_dim=3, out_dim=1):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.register_state("calls", jnp.array(0))

    def __call__(self, x):
        self.calls = self.calls + 1
        return self.fc(x)


def mse_loss(model, batch):
    model, y = pax.purecall(model, batch["x"])
    return jnp.mean((y - batch["y"]) ** 2), (model, {"mean_prediction": y.mean()})


def regression_batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = x @ np.array([[1.5], [-2.0], [0.5]], np.float32) + 0.25
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def fresh_state(tx=None, seed=0):
    pax.seed_rng_key(seed)
    return TrainState.create(Regression(), tx or optax.sgd(0.1), seed=seed)


def leaves_equal(a, b):
    return all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_linear_regression_converges_to_the_coefficients():
    state = fresh_state(optax.adam(0.05))
    step = make_train_step(mse_loss)
    batch = regression_batch()
    for _ in range(300):
        state, metrics = step(state, batch)
    np.testing.assert_allclose(state.model.fc.weight[:, 0], [1.5, -2.0, 0.5], atol=1e-2)
    np.testing.assert_allclose(state.model.fc.bias, [0.25], atol=1e-2)
    assert int(state.model.calls) == 300 and int(state.step) == 300
    assert float(metrics["loss"]) < 1e-4


def test_mlp_fits_a_classification_set():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)).astype(np.float32)
    labels = ((x[:, 0] * x[:, 1]) > 0).astype(np.int32)  # XOR-like quadrants
    pax.seed_rng_key(1)
    model = nn.Linear(2, 32) >> jax.nn.relu >> nn.Linear(32, 32) >> jax.nn.relu >> nn.Linear(32, 2)

    def loss_fn(model, batch):
        logits = model(batch["x"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, (model, {"accuracy": (logits.argmax(-1) == batch["y"]).mean()})

    state = TrainState.create(model, optax.adam(0.01))
    step = make_train_step(loss_fn)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(labels)}
    for _ in range(300):
        state, metrics = step(state, batch)
    assert float(metrics["accuracy"]) > 0.95


def test_optimizer_step_is_pure_and_leaves_frozen_parameters_bitwise_unchanged():
    pax.seed_rng_key(0)
    model = nn.Linear(3, 4) >> nn.Linear(4, 1)
    model = model.set(0, pax.freeze_parameters(model[0]))
    opt = Optimizer(model, optax.adam(0.1))
    grads = pax.grad(lambda m, x: m(x).sum())(model, jnp.ones((2, 3)))
    new_model, new_opt = opt.step(grads, model)
    assert new_model[0].weight is model[0].weight or np.array_equal(
        new_model[0].weight, model[0].weight
    )
    assert not np.array_equal(new_model[1].weight, model[1].weight)
    assert leaves_equal(
        opt.opt_state, Optimizer(model, optax.adam(0.1)).opt_state
    )  # input untouched
    assert int(optax.tree_utils.tree_get(new_opt.opt_state, "count")) == 1

    state = TrainState.create(model, optax.adam(0.1))
    frozen_before = np.asarray(state.model[0].weight)

    def loss_fn(m, batch):
        return m(batch).sum(), (m, {})

    step = make_train_step(loss_fn)
    for _ in range(3):
        state, _ = step(state, jnp.ones((2, 3)))
    np.testing.assert_array_equal(state.model[0].weight, frozen_before)


def test_learning_rate_of_a_schedule_is_reported():
    schedule = make_schedule("warmup_cosine", 0.1, total_steps=10, warmup_steps=4)
    state = fresh_state(make_transformation("sgd", schedule))
    step = make_train_step(mse_loss)
    lrs = []
    for _ in range(5):
        state, metrics = step(state, regression_batch())
        lrs.append(float(metrics["learning_rate"]))
    np.testing.assert_allclose(lrs, [schedule(i) for i in range(5)], rtol=1e-5)
    assert state.optimizer.learning_rate is not None


def test_clip_grad_norm_clips_the_update():
    batch = regression_batch()
    batch = {"x": batch["x"], "y": batch["y"] * 100}  # huge gradients
    moved = {}
    for clip in (None, 0.5):
        state = fresh_state(make_transformation("sgd", 1.0, clip_grad_norm=clip))
        before = np.asarray(state.model.fc.weight)
        state, metrics = make_train_step(mse_loss)(state, batch)
        moved[clip] = float(np.linalg.norm(state.model.fc.weight - before))
        assert float(metrics["grad_norm"]) > 10
    assert moved[0.5] <= 0.5 + 1e-4 < moved[None]


def test_grad_accumulation_equals_the_full_batch():
    batch = regression_batch(n=32)
    full, accum = fresh_state(optax.adam(0.01)), fresh_state(optax.adam(0.01))
    full_step, accum_step = make_train_step(mse_loss), make_train_step(mse_loss, grad_accum_steps=4)
    for _ in range(3):
        full, m_full = full_step(full, batch)
        accum, m_accum = accum_step(accum, batch)
    np.testing.assert_allclose(accum.model.fc.weight, full.model.fc.weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_accum["loss"], m_full["loss"], rtol=1e-5)
    assert int(accum.model.calls) == 12  # the model saw each micro-batch
    with pytest.raises(ValueError, match="does not divide"):
        make_train_step(mse_loss, grad_accum_steps=5)(fresh_state(), batch)


def test_steps_per_call_equals_single_calls():
    batches = [regression_batch(n=16, seed=s) for s in range(4)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)
    single, scanned = fresh_state(optax.adam(0.01)), fresh_state(optax.adam(0.01))
    step = make_train_step(mse_loss)
    losses = []
    for b in batches:
        single, m = step(single, b)
        losses.append(float(m["loss"]))
    scanned, metrics = make_train_step(mse_loss, steps_per_call=4)(scanned, stacked)
    assert metrics["loss"].shape == (4,)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-6)
    np.testing.assert_allclose(scanned.model.fc.weight, single.model.fc.weight, rtol=1e-6)
    assert int(scanned.step) == 4


def test_nonfinite_guard_skips_and_counts():
    state = fresh_state()
    step = make_train_step(mse_loss)
    state, _ = step(state, regression_batch())
    weight = np.asarray(state.model.fc.weight)
    bad = regression_batch()
    bad["y"] = bad["y"].at[0, 0].set(jnp.nan)
    state, metrics = step(state, bad)
    np.testing.assert_array_equal(state.model.fc.weight, weight)
    assert int(metrics["skipped_steps"]) == 1 and int(state.step) == 2
    assert int(state.model.calls) == 1  # the skipped step's state changes are dropped too
    state, metrics = step(state, regression_batch())
    assert int(metrics["skipped_steps"]) == 1 and not np.array_equal(state.model.fc.weight, weight)


def test_ema_follows_the_formula():
    state = fresh_state()
    step = make_train_step(mse_loss, ema_decay=0.9)
    expected = jax.tree_util.tree_map(np.asarray, pax.select_parameters(state.model))
    for _ in range(3):
        state, _ = step(state, regression_batch())
        expected = jax.tree_util.tree_map(
            lambda e, p: 0.9 * e + 0.1 * p, expected, pax.select_parameters(state.model)
        )
    np.testing.assert_allclose(state.ema_model.fc.weight, expected.fc.weight, rtol=1e-6)
    assert not np.allclose(state.ema_model.fc.weight, state.model.fc.weight)


def test_dynamic_loss_scale_halves_on_overflow_and_skips():
    state = fresh_state()
    step = make_train_step(mse_loss, loss_scale="dynamic")
    state, metrics = step(state, regression_batch())
    assert float(metrics["loss_scale"]) == 2.0**15
    bad = regression_batch()
    bad["x"] = bad["x"].at[0, 0].set(jnp.inf)
    weight = np.asarray(state.model.fc.weight)
    state, metrics = step(state, bad)
    assert float(metrics["loss_scale"]) == 2.0**14 and int(metrics["skipped_steps"]) == 1
    np.testing.assert_array_equal(state.model.fc.weight, weight)


def test_loss_scaling_does_not_change_the_update():
    plain, scaled = fresh_state(), fresh_state()
    plain, _ = make_train_step(mse_loss)(plain, regression_batch())
    scaled, _ = make_train_step(mse_loss, loss_scale="dynamic")(scaled, regression_batch())
    np.testing.assert_allclose(scaled.model.fc.weight, plain.model.fc.weight, rtol=1e-6)


def test_state_buffers_are_donated():
    state = make_train_step(mse_loss)(fresh_state(), regression_batch())[0]
    weight = state.model.fc.weight
    make_train_step(mse_loss)(state, regression_batch())
    assert weight.is_deleted()


def test_loss_fn_with_a_key_gets_a_fresh_key_each_step():
    seen = []

    def loss_fn(model, batch, key):
        noise = jax.random.normal(key, ())
        model, y = pax.purecall(model, batch["x"])
        return jnp.mean((y - batch["y"]) ** 2), (model, {"noise": noise})

    state = fresh_state()
    step = make_train_step(loss_fn)
    for _ in range(2):
        state, metrics = step(state, regression_batch())
        seen.append(float(metrics["noise"]))
    assert seen[0] != seen[1]


def test_eval_step_uses_eval_mode_and_changes_nothing():
    pax.seed_rng_key(0)
    model = nn.Linear(3, 3) >> nn.Dropout(0.5)
    state = TrainState.create(model, optax.sgd(0.1))

    def eval_fn(model, batch):
        assert not model.training
        model, y = pax.purecall(model, batch)
        return {"out": y}

    eval_step = make_eval_step(eval_fn)
    x = jnp.ones((2, 3))
    out1, out2 = eval_step(state, x)["out"], eval_step(state, x)["out"]
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_allclose(out1, state.model[0](x), rtol=1e-6)
    assert state.model.training


def test_wrong_loss_fn_return_is_explained():
    with pytest.raises(TypeError, match=r"must return \(loss, \(model, metrics\)\)"):
        make_train_step(lambda m, b: jnp.sum(m.fc(b["x"])))(fresh_state(), regression_batch())


def test_build_update_fn_for_short_scripts():
    def loss_fn(model, inputs):
        model, y = pax.purecall(model, inputs["x"])
        loss = jnp.mean((y - inputs["y"]) ** 2)
        return loss, (loss, model)

    pax.seed_rng_key(0)
    model = Regression()
    optimizer = Optimizer(model, optax.adam(0.05))
    update_fn = jax.jit(build_update_fn(loss_fn))
    for _ in range(200):
        loss, model, optimizer = update_fn(model, optimizer, regression_batch())
    assert float(loss) < 1e-3
