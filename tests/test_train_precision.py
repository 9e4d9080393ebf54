"""`trainer.precision`: short names, policy strings, and float16's dynamic loss scale."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import RegressionData

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.cli.build import build_trainer
from paxtrain.config.composition import compose
from paxtrain.errors import ArgumentError, ConfigError
from paxtrain.train import StepSettings, Trainer, default_hooks
from paxtrain.train.precision import loss_scale, parse_precision

CHAR_RNN = "configs/char_rnn.yaml"


class Regression(pax.Module):
    """The loss goes through `__call__`, where a module's mixed-precision policy applies."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def __call__(self, x):
        return self.fc(x)

    def loss(self, batch):
        return jnp.mean((self(batch["x"]) - batch["y"]) ** 2), {}


def train(tmp_path, precision, steps=6, log_every=2):
    pax.seed_rng_key(0)
    trainer = Trainer(
        max_steps=steps, run_dir=tmp_path / precision.replace(",", "_"), loggers=["jsonl"],
        hooks=default_hooks(log_every=log_every, progress="off", plot=False),
        step=StepSettings(precision=precision),
    )
    state = trainer.fit(Regression(), RegressionData(), optax.sgd(0.05))
    records = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return trainer, state, [json.loads(r) for r in records]


def test_policy_string_is_the_short_name(tmp_path):
    _, by_name, _ = train(tmp_path, "bfloat16")
    _, by_policy, _ = train(tmp_path, "params=float32,compute=bfloat16,output=float32")
    leaves = jax.tree_util.tree_leaves(by_name.model.parameters())
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)  # float32 master weights
    for a, b in zip(leaves, jax.tree_util.tree_leaves(by_policy.model.parameters())):
        np.testing.assert_array_equal(a, b)
    _, by_float32, _ = train(tmp_path, "float32")
    differs = [
        not np.array_equal(a, b)
        for a, b in zip(leaves, jax.tree_util.tree_leaves(by_float32.model.parameters()))
    ]
    assert any(differs)  # the policy did run the compute in bfloat16


def test_float16_trains_with_a_dynamic_loss_scale(tmp_path):
    trainer, state, records = train(tmp_path, "float16", steps=6, log_every=1)
    assert trainer.step_settings.step_options()["loss_scale"] == "dynamic"
    # Steps whose scaled loss overflows float16 (loss x 2**15 > 65504) are skipped, and each
    # halves the scale.
    counts = [0] + [int(r["train/skipped_steps"]) for r in records if "train/skipped_steps" in r]
    skipped = {i for i in range(6) if counts[i + 1] > counts[i]}
    assert 1 <= len(skipped) < 6
    assert float(loss_scale(state)) == 2.0 ** (15 - len(skipped))
    # The other steps used the unscaled float16 gradients: they match float32 SGD in NumPy on
    # the same batches, to float16's precision.
    pax.seed_rng_key(0)
    init = Regression().fc
    w, b = np.asarray(init.weight, np.float64), np.asarray(init.bias, np.float64)
    for i in sorted(set(range(6)) - skipped):
        batch = RegressionData().train_batch(i)
        residual = batch["x"] @ w + b - batch["y"]
        w = w - 0.05 * 2 * batch["x"].T @ residual / len(residual)
        b = b - 0.05 * 2 * residual.mean(axis=0)
    assert state.model.fc.weight.dtype == jnp.float32
    np.testing.assert_allclose(state.model.fc.weight, w, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(state.model.fc.bias, b, rtol=1e-2, atol=1e-3)


def test_bfloat16_has_no_loss_scale(tmp_path):
    trainer = Trainer(
        max_steps=2, run_dir=tmp_path,
        hooks=default_hooks(progress="off"),
        step=StepSettings(precision="bfloat16"),
    )
    assert "loss_scale" not in trainer.step_settings.step_options()


def test_config_accepts_a_quoted_policy_and_rejects_a_bad_one(tmp_path):
    policy = "params=float32,compute=bfloat16,output=float32"
    assert compose(CHAR_RNN, [f'trainer.precision="{policy}"']).trainer.precision == policy
    with pytest.raises(ConfigError, match=r"`trainer.precision`: precision 'float8'.*bfloat16"):
        build_trainer(compose(CHAR_RNN, ["trainer.precision=float8"]), tmp_path)
    with pytest.raises(ConfigError, match=r"Unknown policy field 'comp'"):
        build_trainer(
            compose(CHAR_RNN, ["trainer.precision='params=float32,comp=float16'"]), tmp_path
        )


@pytest.mark.parametrize(
    "policy, words",
    [
        ("params=float32,compute=int8", "compute=int8 is not a floating-point dtype"),
        ("output=int32", "output=int32 is not a floating-point dtype"),
        ("params=float16,compute=float16", "params=float16 keeps no float32 master copy"),
    ],
)
def test_policies_that_cannot_train_are_refused(policy, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_precision(policy)


def test_a_float16_policy_the_backend_cannot_lower_is_refused_before_compiling():
    from paxtrain.train.precision import check_backend

    class Attention(pax.Module):  # XLA:CPU has no float16 dot with a float32 result
        def __call__(self, x):
            return jax.nn.dot_product_attention(x, x, x)

    def loss(model, x):
        return model(x).sum(), None

    x = jnp.ones((2, 4, 2, 8))
    check_backend(parse_precision("float16"), pax.nn.Linear(8, 8), x, loss)
    check_backend(parse_precision("bfloat16"), Attention(), x, loss)  # runs everywhere
    if jax.default_backend() == "cpu":
        with pytest.raises(ArgumentError, match="does not run in float16 on the cpu backend"):
            check_backend(parse_precision("float16"), Attention(), x, loss)
