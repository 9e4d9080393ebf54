"""The jitted train step, its options, the eval step and `build_update_fn`."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from core_modules import SeededLinear

import paxtrain as pax
from paxtrain.optim import Optimizer, make_transformation
from paxtrain.train import (
    StepOption,
    TrainState,
    dynamic_loss_scale,
    make_eval_step,
    make_train_step,
    skip_nonfinite,
)
from paxtrain.train.nonfinite import skipped_steps
from paxtrain.train.options import ema_model, ema_parameters
from paxtrain.train.precision import loss_scale
from paxtrain.utils import build_update_fn

COEFFICIENTS = np.array([[1.5], [-2.0], [0.5]], np.float32)
INTERCEPT = 0.25


class Regression(pax.Module):
    """A linear model that counts its calls in an int32 state."""

    def __init__(self):
        super().__init__()
        self.fc = SeededLinear(3, 1)
        self.register_state("calls", jnp.array(0, jnp.int32))

    def __call__(self, x):
        self.calls = self.calls + 1
        return self.fc(x)


class Center(pax.Module):
    """BatchNorm's running mean alone: batch mean in training mode, running mean in eval mode."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_state("mean", jnp.zeros(dim))

    def __call__(self, x):
        if not self.training:
            return x - self.mean
        batch_mean = x.mean(0)
        self.mean = 0.5 * self.mean + 0.5 * batch_mean
        return x - batch_mean


class MLP(pax.Module):
    def __init__(self, sizes: tuple[int, ...], center: bool = False):
        super().__init__()
        self.center = Center(sizes[0]) if center else None
        self.layers = [SeededLinear(a, b, seed=i) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))]

    def __call__(self, x):
        if self.center is not None:
            x = self.center(x)
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


def mse_loss(model, batch):
    model, y = pax.purecall(model, batch["x"])
    return jnp.mean((y - batch["y"]) ** 2), (model, {"mean_prediction": y.mean()})


def regression_batch(n=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(x @ COEFFICIENTS + INTERCEPT)}


def stack(batches):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)


def fresh_state(tx=None, model=None):
    return TrainState.create(model or Regression(), tx or optax.sgd(0.1), seed=0)


def snapshot(tree):
    """Host copies of the leaves: donated device buffers do not survive the next step."""
    return jax.tree_util.tree_map(np.array, tree)


def assert_trees_equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol, atol), a, b)


# ------------------------------------------------------------------------------ it learns
def test_linear_regression_converges_to_the_coefficients():
    state = fresh_state(optax.adam(0.05))
    step = make_train_step(mse_loss)
    batch = regression_batch()
    for _ in range(300):
        state, metrics = step(state, batch)
    np.testing.assert_allclose(state.model.fc.weight, COEFFICIENTS, atol=1e-2)
    np.testing.assert_allclose(state.model.fc.bias, [INTERCEPT], atol=1e-2)
    assert float(metrics["loss"]) < 1e-4
    # The counter incremented inside loss_fn saw every step; so did the state's own count.
    assert int(state.model.calls) == 300 and int(state.step) == 300


def test_mlp_fits_a_classification_set():
    x = np.random.default_rng(0).normal(size=(128, 2)).astype(np.float32)
    labels = (x[:, 0] * x[:, 1] > 0).astype(np.int32)  # XOR-like quadrants
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(labels)}

    def loss_fn(model, batch):
        model, logits = pax.purecall(model, batch["x"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, (model, {})

    def accuracy(model, batch):
        return {"accuracy": (model(batch["x"]).argmax(-1) == batch["y"]).mean()}

    state = fresh_state(optax.adam(0.02), MLP((2, 32, 2)))
    step = make_train_step(loss_fn, steps_per_call=50)
    for _ in range(8):
        state, metrics = step(state, stack([batch] * 50))
    assert metrics["loss"].shape == (50,) and float(metrics["loss"][-1]) < 0.2
    assert float(make_eval_step(accuracy)(state, batch)["accuracy"]) > 0.95


# --------------------------------------------------------------------- options compose
def test_grad_accumulation_equals_the_full_batch():
    batch = regression_batch(n=32)
    full, accum = fresh_state(optax.adam(0.01)), fresh_state(optax.adam(0.01))
    full_step, accum_step = make_train_step(mse_loss), make_train_step(mse_loss, grad_accum_steps=4)
    for _ in range(3):
        full, m_full = full_step(full, batch)
        accum, m_accum = accum_step(accum, batch)
    assert_trees_close(pax.select_parameters(accum.model), pax.select_parameters(full.model))
    for name in ("loss", "grad_norm", "mean_prediction"):
        np.testing.assert_allclose(m_accum[name], m_full[name], rtol=1e-5)
    assert int(accum.model.calls) == 12  # the model saw each micro-batch
    with pytest.raises(ValueError, match="does not divide"):
        make_train_step(mse_loss, grad_accum_steps=5)(fresh_state(), batch)


def test_steps_per_call_equals_single_calls():
    batches = [regression_batch(n=16, seed=s) for s in range(4)]
    tx = optax.adam(0.01)  # one transformation: it is static data of both states
    single, scanned = fresh_state(tx), fresh_state(tx)
    step = make_train_step(mse_loss, ema_decay=0.5)
    singles = []
    for b in batches:
        single, m = step(single, b)
        singles.append(m)
    scan_step = make_train_step(mse_loss, ema_decay=0.5, steps_per_call=4)
    scanned, metrics = scan_step(scanned, stack(batches))
    assert_trees_close(metrics, stack(singles))
    assert_trees_close(scanned, single)
    assert int(scanned.step) == 4 and int(scanned.model.calls) == 4


def test_accumulation_inside_steps_per_call():
    batches = [regression_batch(n=8, seed=s) for s in range(2)]
    tx = optax.adam(0.01)
    single, scanned = fresh_state(tx), fresh_state(tx)
    step = make_train_step(mse_loss, grad_accum_steps=2)
    for b in batches:
        single, _ = step(single, b)
    scan_step = make_train_step(mse_loss, grad_accum_steps=2, steps_per_call=2)
    scanned, _ = scan_step(scanned, stack(batches))
    assert_trees_close(scanned, single)
    assert int(scanned.model.calls) == 4


def test_frozen_parameters_stay_bitwise_unchanged_while_others_train():
    model = MLP((3, 4, 1))
    model = model.replace(layers=[pax.freeze_parameters(model.layers[0]), model.layers[1]])
    state = fresh_state(optax.adam(0.1), model)
    before = snapshot(state.model)
    step = make_train_step(mse_loss)
    for _ in range(3):
        state, _ = step(state, regression_batch())
    assert_trees_equal(snapshot(state.model.layers[0]), before.layers[0])
    assert not np.allclose(state.model.layers[1].weight, before.layers[1].weight)


def test_state_counter_counts_every_step():
    state = fresh_state()
    step = make_train_step(mse_loss, steps_per_call=5)
    for _ in range(2):
        state, _ = step(state, stack([regression_batch()] * 5))
    assert int(state.model.calls) == 10 and int(state.step) == 10
    assert state.model.calls.dtype == jnp.int32


def test_grad_norm_is_the_global_norm_and_can_be_left_out():
    batch = regression_batch()
    state = fresh_state()
    params = pax.select_parameters(state.model)
    grads = jax.grad(lambda p: mse_loss(pax.update_parameters(state.model, p), batch)[0])(params)
    with_norm = make_train_step(mse_loss, nonfinite_guard=False)
    _, metrics = with_norm(fresh_state(), batch)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6)
    # Left out, the step is otherwise the same; the guard needs the norm, so it keeps it.
    without = make_train_step(mse_loss, nonfinite_guard=False, grad_norm=False)
    new_state, metrics_without = without(fresh_state(), batch)
    assert "grad_norm" not in metrics_without
    np.testing.assert_allclose(metrics_without["loss"], metrics["loss"], rtol=0)
    guarded = make_train_step(mse_loss, grad_norm=False)
    assert "grad_norm" in guarded(fresh_state(), batch)[1]


@pytest.mark.parametrize("select", [False, True])
def test_nonfinite_guard_skips_counts_and_leaves_everything_unchanged(select):
    state = fresh_state(optax.adam(0.1))
    guard = (
        {} if not select else {"nonfinite_guard": False, "options": [skip_nonfinite(select=True)]}
    )
    step = make_train_step(mse_loss, ema_decay=0.9, **guard)
    state, metrics = step(state, regression_batch())
    assert int(metrics["skipped_steps"]) == 0
    kept = snapshot((state.model, state.optimizer, ema_parameters(state)))

    bad = regression_batch()
    bad["y"] = bad["y"].at[0, 0].set(jnp.nan)
    state, metrics = step(state, bad)
    assert np.isnan(metrics["loss"])
    # Model (its call counter included), optimizer and EMA are as before the bad step.
    assert_trees_equal(snapshot((state.model, state.optimizer, ema_parameters(state))), kept)
    assert int(metrics["skipped_steps"]) == 1 and int(skipped_steps(state)) == 1
    assert int(state.step) == 2

    state, metrics = step(state, regression_batch())
    assert int(metrics["skipped_steps"]) == 1 and int(state.model.calls) == 2
    assert not np.array_equal(state.model.fc.weight, kept[0].fc.weight)


@pytest.mark.parametrize("backend, branches", [("cpu", True), ("tpu", True), ("gpu", False)])
def test_the_guard_branches_except_on_gpus(monkeypatch, backend, branches):
    """XLA's GPU runtime waits on the host for a conditional's predicate: a select there."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    step = make_train_step(mse_loss)
    state = step.init(fresh_state(optax.adam(0.1)))
    jaxpr = str(jax.make_jaxpr(step._step)(state, regression_batch()))
    leaves = len(jax.tree_util.tree_leaves(state))
    assert ("cond[" in jaxpr) is branches
    # A `jnp.where` of every leaf of the state but the two that advance anyway (step, rng).
    assert (jaxpr.count("jit[name=_where") >= leaves - 2) is not branches


def test_a_finite_guarded_step_equals_the_unguarded_step():
    """The guard runs the update under `lax.cond`: on finite steps it computes the same update
    (XLA may fuse the branch differently, so to float32 rounding, not bitwise)."""
    guarded, plain = fresh_state(optax.adam(0.1)), fresh_state(optax.adam(0.1))
    with_guard = make_train_step(mse_loss, ema_decay=0.9, rollback=True)
    without = make_train_step(mse_loss, ema_decay=0.9, rollback=True, nonfinite_guard=False)
    for seed in range(3):
        guarded, _ = with_guard(guarded, regression_batch(seed=seed))
        plain, _ = without(plain, regression_batch(seed=seed))
    leaves = [jax.tree_util.tree_leaves((s.model, s.optimizer, s.extras)) for s in (guarded, plain)]
    assert len(leaves[0]) == len(leaves[1]) + 1  # the guard's skipped_steps counter
    guarded_leaves = jax.tree_util.tree_leaves(
        (
            guarded.model,
            guarded.optimizer,
            {k: v for k, v in guarded.extras.items() if k != "skip_nonfinite"},
        )
    )
    for a, b in zip(guarded_leaves, leaves[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_an_update_option_inside_the_guard_is_skipped_with_the_update():
    def count_updates(update):
        def counted(state, model, grads, metrics):
            new = update(state, model, grads, metrics)
            return new.with_extras(updates=new.extras["updates"] + 1)

        return counted

    counter = StepOption(
        "updates", lambda state: jnp.array(0, jnp.int32), wrap_update=count_updates
    )
    # Options of one's own go outside the built-in ones, so this one counts every step...
    step = make_train_step(mse_loss, options=[counter])
    bad = regression_batch()
    bad["y"] = bad["y"].at[0, 0].set(jnp.inf)
    state, _ = step(fresh_state(), regression_batch())
    state, metrics = step(state, bad)
    assert int(state.extras["updates"]) == 2 and int(metrics["skipped_steps"]) == 1


def test_the_flat_step_equals_the_module_step_bitwise():
    step = make_train_step(mse_loss, ema_decay=0.9)
    state = step.init(fresh_state(optax.adam(0.1)))
    leaves, treedef = jax.tree_util.tree_flatten(jax.tree_util.tree_map(jnp.copy, state))
    flat_step = step.flat(treedef)
    for seed in range(3):
        state, metrics = step(state, regression_batch(seed=seed))
        leaves, flat_metrics = flat_step(leaves, regression_batch(seed=seed))
        assert float(metrics["loss"]) == float(flat_metrics["loss"])
    assert isinstance(leaves, list) and step.flat(treedef) is flat_step
    for a, b in zip(leaves, jax.tree_util.tree_leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_flat_step_refuses_a_step_that_changes_the_state_structure():
    def add_extra(step):
        def added(state, batch):
            state, metrics = step(state, batch)
            return state.with_extras(surprise=jnp.zeros(())), metrics

        return added

    step = make_train_step(mse_loss, options=[StepOption("surprise", lambda s: {}, add_extra)])
    leaves, treedef = jax.tree_util.tree_flatten(step.init(fresh_state()))
    with pytest.raises(ValueError, match="changed the structure of the state"):
        step.flat(treedef)(leaves, regression_batch())


def test_without_the_guard_a_nan_batch_poisons_the_model():
    state = fresh_state()
    bad = regression_batch()
    bad["y"] = bad["y"].at[0, 0].set(jnp.nan)
    state, metrics = make_train_step(mse_loss, nonfinite_guard=False)(state, bad)
    assert "skipped_steps" not in metrics
    assert np.isnan(state.model.fc.weight).all()


def test_ema_follows_the_formula():
    state = fresh_state()
    step = make_train_step(mse_loss, ema_decay=0.9)
    expected = snapshot(pax.select_parameters(state.model))
    for _ in range(3):
        state, _ = step(state, regression_batch())
        params = pax.select_parameters(state.model)
        expected = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, expected, params)
    assert_trees_close(pax.select_parameters(ema_model(state)), expected)
    assert not np.allclose(ema_model(state).fc.weight, state.model.fc.weight)
    with pytest.raises(KeyError, match="keeps no EMA"):
        _ = ema_model(fresh_state())


def test_learning_rate_of_a_schedule_is_reported():
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=6)
    state = fresh_state(make_transformation("sgd", schedule))
    step = make_train_step(mse_loss, steps_per_call=3)
    lrs = []
    for _ in range(2):
        state, metrics = step(state, stack([regression_batch()] * 3))
        lrs.extend(np.asarray(metrics["learning_rate"]).tolist())
    np.testing.assert_allclose(lrs, [float(schedule(i)) for i in range(6)], rtol=1e-6)
    _, metrics = make_train_step(mse_loss)(fresh_state(optax.sgd(0.1)), regression_batch())
    assert "learning_rate" not in metrics  # a plain optax transformation does not expose it


def test_clip_grad_norm_clips_the_update():
    batch = regression_batch()
    batch["y"] = batch["y"] * 100  # huge gradients
    moved = {}
    for clip in (None, 0.5):
        state = fresh_state(make_transformation("sgd", 1.0, clip_grad_norm=clip))
        before = snapshot(pax.select_parameters(state.model))
        state, metrics = make_train_step(mse_loss)(state, batch)
        delta = jax.tree_util.tree_map(jnp.subtract, pax.select_parameters(state.model), before)
        moved[clip] = float(optax.tree.norm(delta))
        grad_norm = float(metrics["grad_norm"])  # reported before clipping
    assert grad_norm > 100
    np.testing.assert_allclose([moved[0.5], moved[None]], [0.5, grad_norm], rtol=1e-4)


# ------------------------------------------------------------------- mixed precision
class Traced(Regression):
    """Records the dtype its layer computes in (at trace time)."""

    seen: list = []

    def __call__(self, x):
        Traced.seen.append(x.dtype)
        return super().__call__(x)


def test_bfloat16_compute_with_float32_parameters():
    Traced.seen = []
    model = pax.apply_mp_policy(Traced(), "params=float32,compute=bfloat16,output=float32")
    state = fresh_state(optax.adam(0.05), model)
    step = make_train_step(mse_loss, steps_per_call=100)
    for _ in range(3):
        state, metrics = step(state, stack([regression_batch()] * 100))
    assert set(Traced.seen) == {jnp.dtype(jnp.bfloat16)}
    assert state.model.fc.weight.dtype == jnp.float32 and metrics["loss"].dtype == jnp.float32
    np.testing.assert_allclose(state.model.fc.weight, COEFFICIENTS, atol=5e-2)
    assert int(state.model.calls) == 300


def test_float16_with_dynamic_loss_scale_recovers_from_overflow():
    # With a scale of 2**15, the float16 weight gradient overflows: the scale must come down.
    model = pax.apply_mp_policy(Regression(), "params=float32,compute=float16,output=float32")
    state = fresh_state(optax.adam(0.05), model)
    step = make_train_step(mse_loss, loss_scale="dynamic", steps_per_call=100)
    for _ in range(3):
        state, metrics = step(state, stack([regression_batch(n=64)] * 100))
    skipped = int(skipped_steps(state))
    assert 1 <= skipped < 20
    assert float(loss_scale(state)) == 2.0 ** (15 - skipped)
    np.testing.assert_allclose(state.model.fc.weight, COEFFICIENTS, atol=5e-2)


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_good_steps():
    state = fresh_state()
    step = make_train_step(mse_loss, loss_scale=dynamic_loss_scale(initial=8.0, period=2))
    scales = []
    for _ in range(2):
        state, metrics = step(state, regression_batch())
        scales.append(float(metrics["loss_scale"]))
    bad = regression_batch()
    bad["x"] = bad["x"].at[0, 0].set(jnp.inf)
    weight = np.array(state.model.fc.weight)
    state, metrics = step(state, bad)
    scales.append(float(metrics["loss_scale"]))
    assert scales == [8.0, 16.0, 8.0]
    assert int(metrics["skipped_steps"]) == 1
    np.testing.assert_array_equal(state.model.fc.weight, weight)


def test_loss_scaling_does_not_change_the_update():
    plain, scaled = fresh_state(), fresh_state()
    plain, _ = make_train_step(mse_loss)(plain, regression_batch())
    scaled, _ = make_train_step(mse_loss, loss_scale="dynamic")(scaled, regression_batch())
    np.testing.assert_allclose(scaled.model.fc.weight, plain.model.fc.weight, rtol=1e-6)


# ------------------------------------------------------------------- plumbing
def test_state_buffers_are_donated_and_the_batch_is_not():
    step = make_train_step(mse_loss)
    state, _ = step(fresh_state(), regression_batch())
    weight, batch = state.model.fc.weight, regression_batch()
    step(state, batch)
    assert weight.is_deleted() and not batch["x"].is_deleted()

    keep = make_train_step(mse_loss, donate=False)
    state, _ = keep(fresh_state(), regression_batch())
    weight = state.model.fc.weight
    keep(state, regression_batch())
    assert not weight.is_deleted()


def test_eval_step_uses_eval_mode_and_changes_nothing():
    state = fresh_state(model=MLP((3, 1), center=True))
    state, _ = make_train_step(mse_loss)(state, regression_batch())
    before = snapshot(state)
    modes = []

    def eval_fn(model, batch):
        modes.append(model.training)
        model, y = pax.purecall(model, batch["x"])  # the change it makes is dropped
        return {"y": y}

    batch = regression_batch(n=4, seed=1)
    out = make_eval_step(eval_fn)(state, batch)["y"]
    assert modes == [False] and state.model.training
    assert_trees_equal(snapshot(state), before)
    # Eval mode centers with the running mean, not the batch's own mean.
    layer = state.model.layers[0]
    expected = (batch["x"] - state.model.center.mean) @ layer.weight + layer.bias
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1])
def test_an_ema_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match=r"ema_decay is .*must be in \[0, 1\)"):
        make_train_step(mse_loss, ema_decay=decay)


def test_eval_step_can_use_the_ema():
    state = fresh_state()
    state, _ = make_train_step(mse_loss, ema_decay=0.5)(state, regression_batch())

    def eval_fn(model, batch):
        return {"weight": model.fc.weight}

    np.testing.assert_array_equal(
        make_eval_step(eval_fn, use_ema=True)(state, None)["weight"], ema_model(state).fc.weight
    )


def test_loss_fn_with_a_key_gets_a_fresh_key_each_step():
    def loss_fn(model, batch, key):
        noise = jax.random.normal(key, ())
        loss, (model, metrics) = mse_loss(model, batch)
        return loss, (model, {**metrics, "noise": noise})

    state = fresh_state()
    step = make_train_step(loss_fn, grad_accum_steps=2)
    seen = []
    for _ in range(2):
        state, metrics = step(state, regression_batch())
        seen.append(float(metrics["noise"]))
    assert seen[0] != seen[1]


def test_a_custom_option_composes_and_names_must_be_unique():
    def count_finite(step):
        def counted(state, batch):
            new, metrics = step(state, batch)
            count = state.extras["finite"] + jnp.isfinite(metrics["loss"]).astype(jnp.int32)
            return new.with_extras(finite=count), metrics

        return counted

    option = StepOption("finite", lambda state: jnp.array(0, jnp.int32), count_finite)
    step = make_train_step(mse_loss, options=[option])
    state = fresh_state()
    bad = regression_batch()
    bad["y"] = bad["y"].at[0, 0].set(jnp.nan)
    for batch in (regression_batch(), bad, regression_batch()):
        state, _ = step(state, batch)
    assert int(state.extras["finite"]) == 2 and int(skipped_steps(state)) == 1
    with pytest.raises(ValueError, match="Two step options are named 'skip_nonfinite'"):
        make_train_step(mse_loss, options=[skip_nonfinite()])
    with pytest.raises(ValueError, match="loss_scale must be"):
        make_train_step(mse_loss, loss_scale="static")


class FlatExtrasState(pax.Module):
    """A `TrainState` as main wrote it before step options had typed states: one flat dict of
    extras, keyed by the names the options used."""

    def __init__(self, state, extras):
        super().__init__()
        self.model, self.optimizer, self.rng = state.model, state.optimizer, state.rng
        self.register_state("step", state.step)
        self.register_state("extras", dict(extras))


def test_a_checkpoint_with_the_flat_extras_restores_into_the_typed_option_states(tmp_path):
    from paxtrain.checkpoint.store import CheckpointManager, flatten_state
    from paxtrain.train.nonfinite import data_position, update_scale

    step = make_train_step(mse_loss, ema_decay=0.9, loss_scale="dynamic", rollback=True)
    state, _ = step(fresh_state(optax.adam(0.1)), regression_batch())
    ema = jax.tree_util.tree_map(lambda p: p + 1, pax.select_parameters(state.model))
    old = FlatExtrasState(
        state,
        {
            "skipped_steps": jnp.array(2, jnp.int32), "loss_scale": jnp.array(512.0),
            "good_steps": jnp.array(7, jnp.int32), "update_scale": jnp.array(0.25),
            "data_offset": jnp.array(3, jnp.int32), "ema": ema,
        },
    )  # fmt: skip
    assert flatten_state(old).keys() == flatten_state(state).keys()
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(old)
    restored, _ = manager.restore(state)
    manager.close()
    assert int(skipped_steps(restored)) == 2 and float(loss_scale(restored)) == 512.0
    assert int(restored.extras["dynamic_loss_scale"].good_steps) == 7
    assert data_position(restored, 1) == 4 and update_scale(restored) == 0.25
    assert_trees_equal(ema_parameters(restored), ema)
    restored, metrics = step(restored, regression_batch())  # the step takes it as it is
    assert float(metrics["loss_scale"]) == 512.0


def test_two_options_may_not_keep_state_at_one_checkpoint_path():
    from paxtrain.train.nonfinite import SkipNonFiniteState

    counter = StepOption("counter", lambda state: SkipNonFiniteState(jnp.array(0, jnp.int32)))
    with pytest.raises(
        ValueError,
        match=r"Step options 'counter' and 'skip_nonfinite' both keep state at `extras.skipped_steps`",
    ):
        make_train_step(mse_loss, options=[counter]).init(fresh_state())


def test_wrong_loss_fn_return_is_explained():
    with pytest.raises(TypeError, match=r"must return \(loss, \(model, metrics\)\)"):
        make_train_step(lambda m, b: jnp.sum(m.fc(b["x"])))(fresh_state(), regression_batch())


# ------------------------------------------------------------------- build_update_fn
def pax_style_loss(model, inputs):
    model, y = pax.purecall(model, inputs["x"])
    loss = jnp.mean((y - inputs["y"]) ** 2)
    return loss, (loss, model)


def test_build_update_fn_for_short_scripts():
    model = Regression()
    optimizer = Optimizer(model, optax.adam(0.05))
    update_fn = jax.jit(build_update_fn(pax_style_loss))
    for _ in range(200):
        model, optimizer, loss = update_fn(model, optimizer, regression_batch())
    assert float(loss) < 1e-3 and int(model.calls) == 200


def test_build_update_fn_in_scan_mode_equals_the_loop():
    batches = [regression_batch(n=8, seed=s) for s in range(5)]
    model = Regression()
    optimizer = Optimizer(model, optax.adam(0.05))
    update_fn = build_update_fn(pax_style_loss)
    looped = (model, optimizer)
    losses = []
    for b in batches:
        *looped, loss = update_fn(*looped, b)
        losses.append(loss)
    scan_fn = build_update_fn(pax_style_loss, scan_mode=True)
    scanned, scan_losses = jax.lax.scan(scan_fn, (model, optimizer), stack(batches))
    np.testing.assert_allclose(scan_losses, losses, rtol=1e-6)
    assert_trees_close(scanned, tuple(looped))


@pytest.mark.parametrize(
    "name",
    [
        "paxtrain.utils",
        "paxtrain.train.state",
        "paxtrain.train.gradients",
        "paxtrain.train.options",
        "paxtrain.train.nonfinite",
        "paxtrain.train.precision",
        "paxtrain.train.step",
    ],
)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    globs = {"jax": jax, "jnp": jnp, "optax": optax, "pax": pax}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
