"""Fine-tuning: parameters from a checkpoint, a subset by path, freezing by path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain import parallel
from paxtrain.checkpoint.finetune import freeze_by_path, load_parameters
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.errors import CheckpointError
from paxtrain.train import TrainState


class Net(pax.Module):
    def __init__(self, hidden=4, classes=2):
        super().__init__()
        self.encoder = nn.Linear(3, hidden) >> nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)


@pytest.fixture
def pretrained(tmp_path):
    pax.seed_rng_key(1)
    model = jax.tree_util.tree_map(lambda x: x + 10.0, Net())
    manager = CheckpointManager(tmp_path / "checkpoints", async_save=False)
    manager.save(TrainState.create(model, optax.sgd(0.1)).replace(step=jnp.array(5)))
    manager.close()
    return tmp_path, model


def test_load_all_parameters_from_a_run_directory(pretrained):
    run_dir, source = pretrained
    pax.seed_rng_key(2)
    model = load_parameters(Net(), run_dir)
    np.testing.assert_array_equal(model.encoder[0].weight, source.encoder[0].weight)
    np.testing.assert_array_equal(model.head.bias, source.head.bias)


def test_load_a_subset_by_path_and_from_a_step_directory(pretrained):
    run_dir, source = pretrained
    pax.seed_rng_key(2)
    fresh = Net(classes=5)  # a new head: only the encoder can be loaded
    model = load_parameters(fresh, run_dir / "checkpoints" / "5", include=[r"^encoder\."])
    np.testing.assert_array_equal(model.encoder[1].weight, source.encoder[1].weight)
    np.testing.assert_array_equal(model.head.weight, fresh.head.weight)
    with pytest.raises(
        CheckpointError, match=r"`head.weight` has shape \(4, 2\) in the checkpoint and \(4, 5\)"
    ):
        load_parameters(fresh, run_dir)
    with pytest.raises(CheckpointError, match="loaded no parameter"):
        load_parameters(fresh, run_dir, include=["^nothing"])
    with pytest.raises(CheckpointError, match="is not a run directory"):
        load_parameters(fresh, run_dir / "checkpoints" / "5" / "state" / "nope")


def test_only_the_parameters_asked_for_are_read(pretrained, monkeypatch):
    run_dir, source = pretrained
    read = []
    for cls in (ocp.Checkpointer, ocp.AsyncCheckpointer, ocp.StandardCheckpointer):

        def restore(self, *args, _original=cls.restore, **kwargs):
            restored = _original(self, *args, **kwargs)
            read.extend(flatten_state(restored))
            return restored

        monkeypatch.setattr(cls, "restore", restore)
    pax.seed_rng_key(2)
    model = load_parameters(Net(), run_dir, include=[r"^encoder\."])
    # The encoder's parameters and nothing else: no optimizer moments, no head, no step.
    assert sorted(read) == [
        f"model.encoder.layers.{i}.{name}" for i in (0, 1) for name in ("bias", "weight")
    ]
    np.testing.assert_array_equal(model.encoder[1].weight, source.encoder[1].weight)


def test_an_abstract_model_is_read_into_the_layout_its_leaves_give(pretrained):
    run_dir, source = pretrained
    # As `Trainer.prepare` passes it to `init_from` for a sharded build.
    abstract = parallel.laid_out(jax.eval_shape(parallel.seeded(Net, 2)), None)
    model = load_parameters(abstract, run_dir, include=[r"^encoder\."])
    np.testing.assert_array_equal(model.encoder[1].weight, source.encoder[1].weight)
    assert model.encoder[1].weight.sharding == abstract.encoder[1].weight.sharding
    assert isinstance(model.head.weight, jax.ShapeDtypeStruct)  # not loaded: left to the build


def test_frozen_parameters_are_loaded_and_stay_frozen(pretrained):
    run_dir, source = pretrained
    pax.seed_rng_key(2)
    model = load_parameters(freeze_by_path(Net(), [r"^encoder$"]), run_dir)
    assert model.encoder.__dict__["_pax_info"].frozen
    np.testing.assert_array_equal(model.encoder[0].weight, source.encoder[0].weight)
    np.testing.assert_array_equal(model.head.weight, source.head.weight)


def test_freeze_by_path_freezes_matching_submodules_only():
    model = freeze_by_path(Net(), [r"^encoder$"])
    params = pax.select_parameters(model)
    assert params.encoder[0].weight is None and params.encoder[1].bias is None
    assert params.head.weight is not None
    model = freeze_by_path(Net(), [r"^encoder\.layers\.0$"])
    params = pax.select_parameters(model)
    assert params.encoder[0].weight is None and params.encoder[1].weight is not None
    with pytest.raises(ValueError, match="matches no submodule path"):
        freeze_by_path(Net(), ["decoder"])
