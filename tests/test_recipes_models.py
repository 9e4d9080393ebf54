"""The image classifier and transformer recipes: they learn, and keep their contracts."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.cli.build import instantiate
from paxtrain.config.composition import compose
from paxtrain.data import CharCorpus
from paxtrain.data.images import LabeledImages
from paxtrain.recipes.image_classifier import ImageClassifier
from paxtrain.recipes.llama_lm import LlamaLM
from paxtrain.recipes.transformer_lm import TransformerLM

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"
SMALL_OVERRIDES = {
    "image_classifier": ["data.batch_size=8", "model.channels=[4,8]"],
    "llama_lm": [
        "data.max_chars=20000",
        "data.seq_len=16",
        "data.batch_size=8",
        "model.model_dim=16",
        "model.num_heads=2",
        "model.num_kv_heads=1",
    ],
    "transformer_lm": [
        "data.max_chars=20000",
        "data.seq_len=16",
        "data.batch_size=8",
        "model.model_dim=16",
        "model.num_heads=2",
    ],
}


def train(model, batch, steps, lr):
    """`steps` jitted adam steps on one batch; returns the model and the loss of every step."""
    tx = optax.adam(lr)

    def loss_fn(model, batch):
        model, (loss, _) = pax.purecall(model.loss, batch)
        return loss, model

    @jax.jit
    def step(model, opt_state, batch):
        (loss, model), grads = pax.value_and_grad(loss_fn, has_aux=True)(model, batch)
        params = pax.select_parameters(model)
        updates, opt_state = tx.update(grads, opt_state, params)
        return pax.update_parameters(model, optax.apply_updates(params, updates)), opt_state, loss

    opt_state, losses = tx.init(pax.select_parameters(model)), []
    for _ in range(steps):
        model, opt_state, loss = step(model, opt_state, batch)
        losses.append(float(loss))
    return model, losses


@pytest.fixture(scope="module")
def digits_batch():
    return LabeledImages("digits", batch_size=64).train_batch(0)


@pytest.fixture(scope="module")
def text_batch():
    return CharCorpus(seq_len=16, batch_size=8, max_chars=20_000).train_batch(0)


def test_cnn_loss_decreases_and_batch_norm_statistics_move(digits_batch):
    pax.seed_rng_key(0)
    model = ImageClassifier(10, (8, 8, 1), channels=(4, 8))
    trained, losses = train(model, digits_batch, steps=25, lr=1e-2)
    assert abs(losses[0] - math.log(10)) < 1.0
    assert losses[-1] < 0.3 * losses[0]
    before, after = model.features.layers[1], trained.features.layers[1]
    assert isinstance(after, nn.BatchNorm2D)
    assert not np.allclose(before.ema_mean.averages, after.ema_mean.averages)
    assert not np.allclose(before.ema_var.averages, after.ema_var.averages)
    _, metrics = trained.eval().loss(digits_batch)
    assert metrics["accuracy"] > 0.7  # the running statistics already work in eval mode


def test_cnn_dropout_and_batch_norm_change_only_in_training(digits_batch):
    pax.seed_rng_key(0)
    model = ImageClassifier(10, (8, 8, 1), channels=(4, 8), dropout=0.5)
    images = digits_batch["images"][:8]
    model, first = pax.purecall(model, images)
    model, second = pax.purecall(model, images)
    assert not np.allclose(first, second)  # a new dropout mask, new batch statistics
    frozen = model.eval()
    frozen_after, third = pax.purecall(frozen, images)
    np.testing.assert_array_equal(third, frozen(images))
    for old, new in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(frozen_after)):
        np.testing.assert_array_equal(old, new)


def test_cnn_accepts_odd_image_sizes():
    pax.seed_rng_key(0)
    model = ImageClassifier(3, (7, 5, 2), channels=(4, 8)).eval()  # 7x5 -> 4x3 -> 2x2
    assert model.head.in_dim == 2 * 2 * 8
    assert model(jnp.ones((2, 7, 5, 2))).shape == (2, 3)


def tiny_lm(dropout=0.0):
    pax.seed_rng_key(0)
    return TransformerLM(98, seq_len=16, num_layers=2, num_heads=2, model_dim=16, dropout=dropout)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def test_transformer_starts_uniform_and_its_loss_decreases(lm, text_batch):
    _, losses = train(lm, text_batch, steps=30, lr=1e-2)
    assert abs(losses[0] - math.log(98)) < 0.1  # small initial logits: a uniform guess
    assert losses[-1] < losses[0] - 1.5


def test_transformer_is_causal(lm):
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 98)
    changed = ids.at[:, 10:].set((ids[:, 10:] + 1) % 98)
    logits, changed_logits = lm(ids), lm(changed)
    np.testing.assert_allclose(logits[:, :10], changed_logits[:, :10], atol=1e-6)
    assert not np.allclose(logits[:, 10:], changed_logits[:, 10:])


def test_transformer_eval_is_deterministic_and_dropout_trains(text_batch):
    model = tiny_lm(dropout=0.3)
    ids = text_batch["inputs"]
    model, first = pax.purecall(model, ids)
    _, second = pax.purecall(model, ids)
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(model.eval()(ids), model.eval()(ids))


def test_transformer_errors_name_the_fix(lm):
    with pytest.raises(ValueError, match=r"model_dim \(30\) must be divisible by num_heads \(4\)"):
        TransformerLM(vocab_size=10, seq_len=8, model_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="has 17 positions .* seq_len=16"):
        lm(jnp.zeros((1, 17), jnp.int32))


@pytest.mark.parametrize(
    "name, model_type",
    [
        ("image_classifier", ImageClassifier),
        ("llama_lm", LlamaLM),
        ("transformer_lm", TransformerLM),
    ],
)
def test_configs_build_their_data_and_model(name, model_type):
    overrides = SMALL_OVERRIDES[name]  # the tests' shapes: eager ops are compiled already
    cfg = compose(CONFIGS / f"{name}.yaml", overrides)
    data = instantiate(cfg.data, "data")
    model = instantiate(cfg.model, "model", **data.info)
    assert isinstance(model, model_type)
    loss, metrics = model.eval().loss(jax.tree_util.tree_map(jnp.asarray, data.train_batch(0)))
    assert np.isfinite(float(loss)) and metrics
