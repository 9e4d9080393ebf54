"""Any optax optimizer and schedule from the `optimizer` config section (`paxtrain.config.optimizer`)."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from cli_support import CHAR_RNN, ROOT, TINY_CHAR_RNN

import paxtrain as pax
from paxtrain.cli.app import main
from paxtrain.config.composition import compose
from paxtrain.config.optimizer import build_optimizer
from paxtrain.errors import ConfigError
from paxtrain.optim import Optimizer

P = np.array([[0.5, -1.0, 2.0], [0.25, 0.0, -3.0]], np.float32)
G = np.array([[0.1, -2.0, 0.3], [-0.4, 0.5, 1e-3]], np.float32)


def one_update(tx: optax.GradientTransformation) -> np.ndarray:
    params = {"w": jnp.asarray(P)}
    state = tx.init(params)
    updates, _ = tx.update({"w": jnp.asarray(G)}, state, params)
    return np.asarray(optax.apply_updates(params, updates)["w"])


def test_lion_step_matches_numpy():
    tx = build_optimizer({"_target_": "optax.lion", "learning_rate": 0.01, "weight_decay": 0.1})
    # Lion's first step (zero momentum): p - lr * (sign((1 - b1) g) + wd p).
    expected = P - 0.01 * (np.sign(G) + 0.1 * P)
    np.testing.assert_allclose(one_update(tx), expected, rtol=1e-6)


def test_chain_of_clipping_and_adamw_matches_numpy():
    section = {
        "_target_": "optax.chain",
        "_args_": [
            {"_target_": "optax.clip_by_global_norm", "max_norm": 0.5},
            {"_target_": "adamw", "learning_rate": 0.1, "weight_decay": 0.01},
        ],
    }
    g = G * min(1.0, 0.5 / np.linalg.norm(G))  # clipped to global norm 0.5
    # Adam's bias-corrected first step is g / (|g| + eps); AdamW adds the decay, times the rate.
    expected = P - 0.1 * (g / (np.abs(g) + 1e-8) + 0.01 * P)
    np.testing.assert_allclose(one_update(build_optimizer(section)), expected, rtol=1e-5)


def test_clip_grad_norm_key_equals_the_chain():
    by_key = {"_target_": "optax.sgd", "learning_rate": 0.1, "clip_grad_norm": 0.5}
    chain = optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1))
    np.testing.assert_array_equal(one_update(build_optimizer(by_key)), one_update(chain))


@pytest.mark.parametrize(
    "section, plain",
    [
        ({"_target_": "optax.adafactor", "learning_rate": 0.01}, optax.adafactor(0.01)),
        ({"_target_": "muon", "learning_rate": 0.02}, optax.contrib.muon(0.02)),
        ({"_target_": "optax.lion", "learning_rate": 1e-3}, optax.lion(1e-3)),
    ],
)
def test_injected_learning_rate_leaves_the_update_unchanged(section, plain):
    np.testing.assert_allclose(one_update(build_optimizer(section)), one_update(plain), rtol=1e-6)


class Scale(pax.Module):
    def __init__(self):
        super().__init__()
        self.register_parameter("w", jnp.ones(2))


def test_joined_schedule_is_the_logged_learning_rate():
    section = {
        "_target_": "adamw",
        "learning_rate": {
            "_target_": "optax.join_schedules",
            "boundaries": [3],
            "schedules": [
                {
                    "_target_": "optax.linear_schedule",
                    "init_value": 0.0,
                    "end_value": 0.3,
                    "transition_steps": 3,
                },
                {
                    "_target_": "warmup_cosine",
                    "init_value": 0.3,
                    "peak_value": 0.6,
                    "warmup_steps": 2,
                    "decay_steps": 4,
                },
            ],
        },
    }
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, 0.3, 3), optax.warmup_cosine_decay_schedule(0.3, 0.6, 2, 4)],
        [3],
    )
    model = Scale()
    opt = Optimizer(model, build_optimizer(section))
    seen = []
    for _ in range(6):
        model, opt = opt.step(jax.tree_util.tree_map(jnp.ones_like, model), model)
        seen.append(float(opt.learning_rate))
    np.testing.assert_allclose(seen, [float(schedule(i)) for i in range(6)], rtol=1e-6)


def test_errors_name_the_key_and_the_fix():
    with pytest.raises(
        ConfigError,
        match=r"`optimizer.weight_decay` is not a parameter of optax.adafactor\. Did you mean `weight_decay_rate`",
    ):
        compose(CHAR_RNN, ["optimizer._target_=optax.adafactor"])
    with pytest.raises(ConfigError, match=r"not an optax GradientTransformation"):
        build_optimizer({"_target_": "optax.constant_schedule", "value": 1.0})
    with pytest.raises(ConfigError, match=r"`optimizer.learning_rate.warmup_steps`|decay_steps"):
        compose(CHAR_RNN, ["optimizer.learning_rate.warmup_steps=5000"])


def test_readme_yaml_optimizer_builds():
    blocks = re.findall(r"^```yaml\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.M | re.S)
    sections = [yaml.safe_load(b)["optimizer"] for b in blocks if b.startswith("optimizer:")]
    assert sections
    for section in sections:
        assert np.isfinite(one_update(build_optimizer(section))).all()


def test_lion_trains_from_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "lion"
    code = main([
        "fit", CHAR_RNN, *TINY_CHAR_RNN, "optimizer._target_=optax.lion", "trainer.max_steps=4",
        "trainer.log_every=2", "trainer.eval_every=null", "trainer.plot=false", "callbacks=[]",
        "trainer.checkpoint.enabled=false", f"run_dir={run_dir}",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["train/learning_rate"] for r in records if "train/learning_rate" in r}
    # The logged rate is the mean over the steps since the last log of the recipe's schedule.
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup_steps=2, decay_steps=4)
    expected = {2: np.mean([schedule(0), schedule(1)]), 4: np.mean([schedule(2), schedule(3)])}
    assert logged.keys() == expected.keys()
    np.testing.assert_allclose(
        [logged[s] for s in (2, 4)], [expected[s] for s in (2, 4)], rtol=1e-5
    )
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optimizer"]["_target_"] == "optax.lion"
    # The config is saved as written (the horizon is recorded once, with each checkpoint, where
    # a resume finds it); the schedule follows it, so a resume keeps it or overrides it.
    assert saved["optimizer"]["horizon"] is None
    assert saved["optimizer"]["learning_rate"]["decay_steps"] == "${optimizer.horizon}"
