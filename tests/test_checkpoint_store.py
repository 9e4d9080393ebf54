"""CheckpointManager: round trips, policies, mismatches, corruption, failing saves."""

import errno
import json
import os
import pathlib
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.checkpoint import store
from paxtrain.checkpoint.integrity import array_checksums, array_fingerprints
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.errors import CheckpointError
from paxtrain.train import TrainState


def make_state(width=4, step=0):
    pax.seed_rng_key(0)
    state = TrainState.create(nn.Linear(3, width) >> nn.Linear(width, 1), optax.adam(1e-3))
    return state.replace(step=jnp.asarray(step, jnp.int32))


def save_steps(directory, *steps):
    """Checkpoints of `make_state(512)` at `steps` in `directory`, written and closed."""
    manager = CheckpointManager(directory, async_save=False)
    for step in steps:
        manager.save(make_state(512, step=step))
    manager.close()


def perturbed(state, amount):
    return jax.tree_util.tree_map(lambda x: x + amount if x.dtype == jnp.float32 else x, state)


def assert_trees_equal(a, b):
    # Paths and values: each make_state() builds its own optax closure, which is static data.
    flat_a, flat_b = flatten_state(a), flatten_state(b)
    assert flat_a.keys() == flat_b.keys()
    for path in flat_a:
        np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=path)


def test_round_trip_is_exact_and_meta_is_kept(tmp_path):
    state = perturbed(make_state(step=7), 0.5)
    manager = CheckpointManager(tmp_path, async_save=True)
    manager.save(state, meta={"config_hash": "abc"})
    manager.wait()
    restored, meta = manager.restore(make_state())
    assert_trees_equal(restored, state)
    checksums = meta.pop("fingerprints")
    assert meta == {"step": 7, "data_position": 7, "config_hash": "abc"}
    assert checksums.keys() == flatten_state(state).keys()
    assert type(restored.model[0]) is nn.Linear
    manager.close()


def test_keep_last_and_keep_best(tmp_path):
    manager = CheckpointManager(
        tmp_path, keep_last=2, keep_best=1, monitor="eval/loss", async_save=False
    )
    for step, loss in [(1, 0.5), (2, 0.1), (3, 0.7), (4, 0.9), (5, 0.8)]:
        manager.save(make_state(step=step), metrics={"eval/loss": loss})
    assert manager.steps() == [2, 4, 5]
    assert manager.best_step() == 2
    restored, _ = manager.restore(make_state(), step="best")
    assert int(restored.step) == 2
    restored, _ = manager.restore(make_state(), step=4)
    assert int(restored.step) == 4
    with pytest.raises(CheckpointError, match=r"for step 3 \(have \[2, 4, 5\]\)"):
        manager.restore(make_state(), step=3)
    manager.close()


def test_keep_best_in_max_mode(tmp_path):
    manager = CheckpointManager(
        tmp_path, keep_last=1, keep_best=1, monitor="eval/acc", mode="max", async_save=False
    )
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.7)]:
        manager.save(make_state(step=step), metrics={"eval/acc": acc})
    assert manager.steps() == [2, 3] and manager.best_step() == 2
    manager.close()


def test_shape_mismatch_names_the_path_and_both_shapes(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(width=4))
    with pytest.raises(CheckpointError) as info:
        manager.restore(make_state(width=5))
    message = str(info.value)
    assert "at `model.layers.0.weight`" in message
    assert "checkpoint has shape (3, 4) float32 and the state has shape (3, 5) float32" in message
    manager.close()


def test_structure_mismatch_names_the_missing_path(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state())
    other = make_state().with_extras(skipped_steps=jnp.array(0))
    with pytest.raises(
        CheckpointError, match=r"`extras.skipped_steps` is in the state but not in the checkpoint"
    ):
        manager.restore(other)
    manager.close()


def _damage_newest(directory: pathlib.Path, step: int) -> None:
    """Truncates every data file of a step's state item."""
    for path in (directory / str(step) / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(perturbed(make_state(step=1), 1.0))
    manager.save(perturbed(make_state(step=2), 2.0))
    manager.close()
    _damage_newest(tmp_path, 2)
    manager = CheckpointManager(tmp_path, async_save=False)
    with pytest.warns(UserWarning, match=r"step 2 .* is unreadable .*trying step 1"):
        restored, _ = manager.restore(make_state())
    assert int(restored.step) == 1
    assert_trees_equal(restored, perturbed(make_state(step=1), 1.0))
    manager.close()


def test_incomplete_save_is_ignored(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(step=1))
    manager.close()
    # What a process killed in the middle of a save leaves: a temporary step directory.
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp-1234")
    manager = CheckpointManager(tmp_path, async_save=False)
    assert manager.steps() == [1]
    restored, _ = manager.restore(make_state())
    assert int(restored.step) == 1
    manager.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_failing_save_is_reported_and_keeps_the_last_good_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(step=1))
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(
            CheckpointError, match=r"the last complete checkpoint \(step 1\) is intact"
        ):
            manager.save(make_state(step=2))
    finally:
        tmp_path.chmod(0o700)
    assert manager.steps() == [1]


def test_failing_save_is_reported(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(step=1))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manager._manager, "save", disk_full)
    with pytest.raises(CheckpointError) as info:
        manager.save(make_state(step=2))
    assert "No space left on device" in str(info.value)
    assert "the last complete checkpoint (step 1) is intact" in str(info.value)
    assert str(info.value).endswith(store.SAVE_ADVICE[errno.ENOSPC])
    monkeypatch.undo()
    restored, _ = manager.restore(make_state())
    assert int(restored.step) == 1
    manager.close()


def test_flatten_state_paths():
    paths = list(flatten_state(make_state()))
    assert "model.layers.0.weight" in paths and "step" in paths
    assert any(p.startswith("optimizer.opt_state") for p in paths)


def test_a_failed_save_quotes_orbax_and_advises_by_the_cause(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "ck", async_save=False)

    def refuse(*args, **kwargs):  # what Orbax said to pmap's per-process `x[0]` arrays
        raise ValueError("Cannot serialize host local jax.Array. Use a global array instead.")

    monkeypatch.setattr(manager._manager, "save", refuse)
    with pytest.raises(CheckpointError) as error:
        manager.save(make_state(step=3), wait=True)
    message = str(error.value)
    assert "failed: ValueError: Cannot serialize host local jax.Array." in message
    assert message.endswith(store.SAVE_ADVICE_OTHER)
    assert "disk space" not in message and "permissions" not in message
    monkeypatch.undo()
    manager.close()


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    )


def _flip_one_byte(step_dir):
    """One bit of one stored array value, in the largest data file: decodes fine, wrong value."""
    path = max(_data_files(step_dir), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated file": lambda d: [p.write_bytes(p.read_bytes()[:10]) for p in _data_files(d)],
    "deleted file": lambda d: [p.unlink() for p in _data_files(d)],
    "deleted manifest": lambda d: [p.unlink() for p in (d / "state").rglob("manifest.ocdbt")],
    "random bytes": lambda d: [
        p.write_bytes(np.random.default_rng(0).bytes(p.stat().st_size)) for p in _data_files(d)
    ],
    "deleted state": lambda d: shutil.rmtree(d / "state"),
    "empty directory": lambda d: [shutil.rmtree(d), d.mkdir()],
    "bad meta JSON": lambda d: (d / "meta" / "metadata").write_text("{not json"),
    "one flipped byte": _flip_one_byte,
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_checkpoint_is_moved_aside_and_its_step_saved_again(tmp_path, kind):
    # Wide enough that OCDBT stores the weights in a data file of their own, not inline.
    good, bad = perturbed(make_state(512, step=4), 1.0), perturbed(make_state(512, step=8), 2.0)
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(good)
    manager.save(bad)
    manager.close()
    CORRUPTIONS[kind](tmp_path / "8")

    # A reader changes nothing; a writer moves the damaged step aside, keeping its files.
    CheckpointManager(tmp_path, read_only=True).close()
    assert (tmp_path / "8").is_dir() and not (tmp_path / "8.corrupt").exists()
    with pytest.warns(UserWarning, match=r"step 8|8 is no complete checkpoint"):
        manager = CheckpointManager(tmp_path, async_save=False)
        restored, _ = manager.restore(make_state(512))
    assert int(restored.step) == 4
    assert_trees_equal(restored, good)
    assert (tmp_path / "8.corrupt").is_dir() and manager.steps() == [4]
    manager.save(bad)  # the resumed run reaches step 8 again
    assert manager.steps() == [4, 8]
    assert_trees_equal(manager.restore(make_state(512))[0], bad)
    manager.close()


def test_all_checkpoints_corrupt_is_one_message_listing_them_and_nothing_changes(tmp_path):
    # Issue 23: they were all moved aside, and the same command then trained from step 0.
    save_steps(tmp_path, 4, 8)
    for step in (4, 8):
        CORRUPTIONS["one flipped byte"](tmp_path / str(step))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    manager = CheckpointManager(tmp_path, async_save=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning besides the one message
        with pytest.raises(CheckpointError) as info:
            manager.resume(make_state(512))
    message = str(info.value)
    assert "tried step 8 (" in message and "; step 4 (" in message and "fingerprint" in message
    assert "Nothing was changed on disk" in message and "`--restart`" in message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # --restart: moved aside (files kept), one warning, and the run starts from step 0.
    with pytest.warns(UserWarning, match=r"--restart: moved them aside \(8.corrupt, 4.corrupt"):
        assert manager.resume(make_state(512), restart=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4.corrupt", "8.corrupt"]
    manager.close()


def test_a_start_that_finds_only_moved_aside_checkpoints_refuses_without_restart(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(step=4))
    manager.close()
    (tmp_path / "4").rename(tmp_path / "4.corrupt")
    manager = CheckpointManager(tmp_path, async_save=False)
    with pytest.raises(CheckpointError, match=r"only damaged ones moved aside earlier \(4.corrupt\)"):
        manager.resume(make_state())
    assert manager.resume(make_state(), restart=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4.corrupt"]
    manager.close()


def test_eval_of_latest_names_an_unreadable_newest_and_the_newest_readable_step(tmp_path):
    save_steps(tmp_path, 4, 8)
    CORRUPTIONS["deleted file"](tmp_path / "8")
    reader = CheckpointManager(tmp_path, read_only=True)
    with pytest.raises(CheckpointError) as info:
        reader.restore(make_state(512), fall_back=False)
    message = str(info.value)
    assert "is unreadable: step 8 (" in message and "newest readable checkpoint is step 4" in message
    assert "`--step 4`" in message and "Nothing was changed" in message
    assert "TensorStore details" not in message  # the cause, not Orbax's dump of the spec
    assert int(reader.restore(make_state(512), step=4)[0].step) == 4
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "8"]


def test_a_named_step_that_is_corrupt_is_a_checkpoint_error(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(512, step=4))
    manager.close()
    CORRUPTIONS["one flipped byte"](tmp_path / "4")
    reader = CheckpointManager(tmp_path, read_only=True)
    with pytest.raises(CheckpointError, match=r"step 4 .* unreadable .*fingerprint"):
        reader.restore(make_state(512), step=4)
    reader.close()


def as_checkpoint_before_fingerprints(step_dir):
    """Rewrites a checkpoint's record as older versions wrote it: CRC-32s, no fingerprints."""
    path = step_dir / "meta" / "metadata"
    record = json.loads(path.read_text())
    flat = CheckpointManager(step_dir.parent, read_only=True).restore(make_state(512))[0]
    record.pop("fingerprints")
    record["checksums"] = array_checksums(flatten_state(flat))
    path.write_text(json.dumps(record))


def test_checkpoints_from_before_fingerprints_are_verified_with_their_crc(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(512, step=4))
    manager.close()
    as_checkpoint_before_fingerprints(tmp_path / "4")
    reader = CheckpointManager(tmp_path, read_only=True)
    assert int(reader.restore(make_state(512))[0].step) == 4
    CORRUPTIONS["one flipped byte"](tmp_path / "4")
    with pytest.raises(CheckpointError, match=r"step 4 .* unreadable .*CRC-32"):
        reader.restore(make_state(512), step=4)
    reader.close()


def test_fingerprints_catch_each_flipped_bit_and_do_not_depend_on_the_layout():
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    (reference,) = array_fingerprints({"x": x}).values()
    words = x.view(np.uint32).reshape(-1)
    expected = int(np.sum(words.astype(np.uint64) * (2 * np.arange(words.size) + 1)) % 2**32)
    assert reference == f"{expected:08x}"  # the definition, in NumPy
    for i, bit in [(0, 0), (17, 31), (511, 5)]:
        flipped = x.copy().view(np.uint32).reshape(-1)
        flipped[i] ^= np.uint32(1 << bit)
        assert array_fingerprints({"x": flipped.view(np.float32)})["x"] != reference
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert array_fingerprints({"x": swapped})["x"] != reference


def test_a_reader_never_cleans_up_a_writers_temporary_directory(tmp_path):
    manager = CheckpointManager(tmp_path, async_save=False)
    manager.save(make_state(step=1))
    manager.close()
    in_progress = tmp_path / "2.orbax-checkpoint-tmp-1234"
    shutil.copytree(tmp_path / "1", in_progress)  # what a writer saving step 2 has on disk
    reader = CheckpointManager(tmp_path, read_only=True)
    assert reader.steps() == [1] and int(reader.restore(make_state())[0].step) == 1
    reader.close()
    assert in_progress.is_dir()
    writer = CheckpointManager(tmp_path, async_save=False)  # a writer cleans it up before its
    writer.save(make_state(step=3))  # first save (what a reader used to do): the test can tell
    writer.close()
    assert not in_progress.exists()


def test_the_best_checkpoint_ranking_survives_a_resume(tmp_path):
    def manager():
        return CheckpointManager(
            tmp_path, keep_last=1, keep_best=1, monitor="eval/loss", async_save=False
        )

    first = manager()
    for step, loss in [(1, 0.5), (2, 0.1), (3, 0.7)]:
        first.save(make_state(step=step), metrics={"eval/loss": loss})
    first.close()
    resumed = manager()  # a new process: the metrics are read back from the step directories
    assert resumed.best_step() == 2
    for step, loss in [(4, 0.9), (5, None)]:
        resumed.save(make_state(step=step), metrics=None if loss is None else {"eval/loss": loss})
    assert resumed.steps() == [2, 5] and resumed.best_step() == 2
    resumed.close()
