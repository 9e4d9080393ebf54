"""Checkpoints without the frozen base (`CheckpointManager(frozen_base=...)`, a LoRA run's):
what they hold, restoring into a state with the same base, and refusing another base."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.errors import CheckpointError
from paxtrain.train import TrainState


def lora_state(seed=0, base_seed=1):
    """A LoRA'd MLP's TrainState: base weights from `base_seed`, adapters from `seed`."""
    pax.seed_rng_key(base_seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    adapted = nn.apply_lora(model, rank=2, alpha=4.0, paths=[r"0$"], key=jax.random.PRNGKey(seed))
    return TrainState.create(adapted, optax.adam(0.1))


def trained(state):
    """`state` with its trainable parameters moved (the adapters' B no longer zero)."""
    params = jax.tree_util.tree_map(lambda x: x + 0.5, pax.select_parameters(state.model))
    return state.replace(model=pax.update_parameters(state.model, params), step=jnp.array(3))


@pytest.fixture
def saved(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", async_save=False, frozen_base="runs/base")
    state = trained(lora_state())
    manager.save(state)
    return manager, state


def test_the_frozen_base_is_left_out_and_recorded(saved):
    manager, state = saved
    stored = set(manager.saved_arrays(3))
    frozen = {"model.layers.0.weight", "model.layers.0.bias", "model.layers.1.weight",
              "model.layers.1.bias"}  # fmt: skip
    assert stored == set(flatten_state(state)) - frozen
    assert {"model.layers.0.adapter.lora_a", "model.layers.0.adapter.lora_b"} <= stored
    record = manager.meta(3)["frozen_base"]
    assert record["source"] == "runs/base" and set(record["fingerprints"]) == frozen


def test_a_restore_takes_the_base_from_the_state_and_the_rest_from_the_checkpoint(saved):
    manager, state = saved
    restored, _ = manager.restore(lora_state())  # same base, fresh adapters and step
    expected, got = flatten_state(state), flatten_state(restored)
    assert expected.keys() == got.keys()
    for path in expected:
        np.testing.assert_array_equal(got[path], expected[path], err_msg=path)


def test_a_restore_onto_another_base_names_the_first_differing_array(saved):
    manager, _ = saved
    with pytest.raises(CheckpointError) as info:
        manager.restore(lora_state(base_seed=2))
    assert "was trained on other frozen base weights than the ones loaded now" in str(info.value)
    assert "`model.layers.0.weight` has fingerprint" in str(info.value)  # biases start at 0
    assert "(the base came from 'runs/base')" in str(info.value)


def test_a_restore_into_a_state_without_that_frozen_parameter_is_refused(saved):
    manager, _ = saved
    pax.seed_rng_key(1)
    shorter = TrainState.create(nn.Sequential(nn.Linear(8, 8)), optax.adam(0.1))
    with pytest.raises(
        CheckpointError, match=r"leaves out the frozen base array `model\.layers\.1"
    ):
        manager.restore(shorter)
    pax.seed_rng_key(1)
    unfrozen = TrainState.create(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), optax.adam(0.1))
    with pytest.raises(
        CheckpointError,
        match=r"`optimizer\.opt_state\.0\.mu\.layers\.0\.weight` is in the state but not in the checkpoint",
    ):
        manager.restore(unfrozen)


def test_without_frozen_base_every_array_is_saved(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", async_save=False)
    state = trained(lora_state())
    manager.save(state)
    assert set(manager.saved_arrays(3)) == set(flatten_state(state))
    assert "frozen_base" not in manager.meta(3)
