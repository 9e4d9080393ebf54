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


def _flip_one_byte(step_dir):
    """One bit of one stored array value, in the largest data file: decodes fine, wrong value."""
    path = max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_corrupt_source_is_refused_with_the_integrity_message(tmp_path):
    pax.seed_rng_key(1)
    wide = Net(hidden=512)  # OCDBT stores its weights in a data file of their own
    manager = CheckpointManager(tmp_path / "checkpoints", async_save=False)
    manager.save(TrainState.create(wide, optax.sgd(0.1)).replace(step=jnp.array(5)))
    manager.close()
    _flip_one_byte(tmp_path / "checkpoints" / "5")
    with pytest.raises(CheckpointError) as info:
        load_parameters(Net(hidden=512), tmp_path)
    message = str(info.value)
    assert (
        "step 5" in message and "the fingerprint of `model.encoder.layers.1.weight` is" in message
    )
    assert "recorded when it was saved" in message


def test_paxtrain_fit_refuses_to_fine_tune_from_a_corrupt_checkpoint(tmp_path, capsys):
    from cli_support import CHAR_RNN, TINY_CHAR_RNN

    from paxtrain.cli.app import main
    from paxtrain.cli.build import build_trainer
    from paxtrain.config.composition import compose

    tiny = [*TINY_CHAR_RNN, "callbacks=[]", "trainer.max_steps=4", "model.hidden_dim=512"]
    _, model, _, _ = build_trainer(compose(CHAR_RNN, tiny), tmp_path / "unused")
    pax.seed_rng_key(1)
    source = tmp_path / "pretrain"
    manager = CheckpointManager(source / "checkpoints", async_save=False)
    manager.save(TrainState.create(model(), optax.sgd(0.1)))
    manager.close()
    _flip_one_byte(source / "checkpoints" / "0")
    code = main(["fit", CHAR_RNN, *tiny, f"init_from={source}", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("paxtrain: ") and "Traceback" not in err
    assert "the fingerprint of `model." in err and "recorded when it was saved" in err
