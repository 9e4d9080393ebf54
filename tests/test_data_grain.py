"""GrainSource: a grain.MapDataset of examples as step-indexed batches; .npy columns from YAML."""

import numpy as np
import pytest
from data_support import Regression, assert_preempted_resume_is_bitwise_exact

from paxtrain.data import GrainSource, NpyColumns
from paxtrain.errors import DataError

grain = pytest.importorskip("grain")

N, BATCH = 40, 8


def examples(n=N):
    """Example i is {"x": [i, i, i], "y": i}: a batch shows which examples it holds."""
    return grain.MapDataset.range(n).map(
        lambda i: {"x": np.full(3, i, np.float32), "y": np.float32(i)}
    )


def ids(batch):
    return batch["y"].astype(int).tolist()


def test_each_epoch_is_a_new_seeded_permutation():
    data = GrainSource(examples(), batch_size=BATCH, seed=3)
    assert data.info == {"num_examples": N, "steps_per_epoch": 5}
    epochs = [
        [i for s in range(5 * e, 5 * e + 5) for i in ids(data.train_batch(s))] for e in (0, 1)
    ]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(N))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(N))
    again = GrainSource(examples(), batch_size=BATCH, seed=3)
    assert ids(again.train_batch(7)) == epochs[1][16:24]  # a pure function of (seed, step)
    assert ids(GrainSource(examples(), batch_size=BATCH, seed=4).train_batch(7)) != epochs[1][16:24]
    ordered = GrainSource(examples(), batch_size=BATCH, shuffle=False)
    assert ids(ordered.train_batch(6)) == list(range(8, 16))
    batch = data.train_batch(0)
    np.testing.assert_array_equal(batch["x"][:, 0], batch["y"])
    assert batch["x"].shape == (BATCH, 3) and batch["x"].dtype == np.float32


def test_eval_reads_the_second_dataset_once_with_a_ragged_last_batch():
    data = GrainSource(examples(), batch_size=BATCH, eval=examples(10), eval_batch_size=4)
    assert [ids(b) for b in data.eval_batches()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(GrainSource(examples(), batch_size=BATCH).eval_batches()) == []


def test_npy_columns_and_a_function_as_datasets(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 2, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(12, dtype=np.int32))
    columns = {"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy")}
    data = GrainSource(columns, batch_size=4, eval=columns, eval_batch_size=5, shuffle=False)
    batch = data.train_batch(1)
    np.testing.assert_array_equal(batch["x"], x[4:8])
    assert batch["y"].tolist() == [4, 5, 6, 7] and batch["y"].dtype == np.int32
    assert [len(b["y"]) for b in data.eval_batches()] == [5, 5, 2]
    made = GrainSource({"_target_": "test_data_grain.examples", "n": 16}, batch_size=4)
    assert made.info["num_examples"] == 16


def array_record_examples(path):
    """Records of 4 float32 bytes each, decoded: what a user's `_target_` function returns."""
    source = grain.sources.ArrayRecordDataSource(path)
    return grain.MapDataset.source(source).map(lambda raw: {"x": np.frombuffer(raw, np.float32)})


def test_array_record_files_through_a_function_named_in_the_config(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "examples.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    for row in rows:
        writer.write(row.tobytes())
    writer.close()
    spec = {"_target_": "test_data_grain.array_record_examples", "path": path}
    data = GrainSource(spec, batch_size=5, eval=spec, eval_batch_size=4, shuffle=False)
    np.testing.assert_array_equal(data.train_batch(3)["x"], rows[5:10])
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in data.eval_batches()]), rows)


def test_bad_datasets_are_named_with_the_fix(tmp_path):
    with pytest.raises(DataError, match="16 examples, too few for one batch of batch_size=32"):
        GrainSource(examples(16), batch_size=32)
    with pytest.raises(DataError, match="eval dataset is empty"):
        GrainSource(examples(), batch_size=BATCH, eval=examples(0))
    with pytest.raises(DataError, match="must be a grain.MapDataset, a mapping .* got list"):
        GrainSource([1, 2, 3], batch_size=1)
    with pytest.raises(FileNotFoundError, match="data.train.x: file not found: .*nope.npy"):
        GrainSource({"x": str(tmp_path / "nope.npy")}, batch_size=1)
    with pytest.raises(DataError, match="data.train.x: .*x.csv is not a .npy file"):
        GrainSource({"x": str(tmp_path / "x.csv")}, batch_size=1)
    np.save(tmp_path / "a.npy", np.zeros(3))
    np.save(tmp_path / "b.npy", np.zeros(4))
    with pytest.raises(DataError, match=r"different lengths \({'a': 3, 'b': 4}\)"):
        NpyColumns({"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"})


def test_preempted_resume_through_grain_is_bitwise_exact(tmp_path):
    assert_preempted_resume_is_bitwise_exact(
        lambda: Regression(3),
        lambda: GrainSource(examples(), batch_size=BATCH, eval=examples(12), seed=1),
        tmp_path,
    )


@pytest.mark.slow
def test_grain_workers_give_the_same_batches_and_the_same_resumed_run(tmp_path):
    alone = GrainSource(examples(), batch_size=BATCH, seed=5)
    workers = GrainSource(examples(), batch_size=BATCH, seed=5, workers=2)
    # Read twice, in sequence (workers), a jump (a resume: read here, workers again after it).
    for step in [0, 0, 1, 2, 3, 9, 10, 11]:
        assert ids(workers.train_batch(step)) == ids(alone.train_batch(step)), step
    assert workers._stream is not None  # steps 10 and 11 came from the workers
    workers.close()
    assert_preempted_resume_is_bitwise_exact(
        lambda: Regression(3),
        lambda: GrainSource(examples(), batch_size=BATCH, eval=examples(12), seed=1, workers=1),
        tmp_path,
    )


def write_npy_images(folder, sizes=(("train", 64), ("test", 20))):
    """Random float32 8x8 images and int32 labels, as configs/data/npy.yaml reads them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in sizes:
        arrays[split] = (
            rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32),
        )
        np.save(folder / f"{split}_x.npy", arrays[split][0])
        np.save(folder / f"{split}_y.npy", arrays[split][1])
    return arrays


def npy_overrides(folder):
    return [
        "data=npy", f"data.train.images={folder}/train_x.npy",
        f"data.train.labels={folder}/train_y.npy", f"data.eval.images={folder}/test_x.npy",
        f"data.eval.labels={folder}/test_y.npy", "data.info.num_classes=10",
        "data.info.image_shape=[8,8,1]", "data.eval_batch_size=8",
    ]  # fmt: skip


def test_the_image_recipe_reads_npy_files_through_grain_from_yaml(tmp_path):
    from paxtrain.cli.build import instantiate
    from paxtrain.config.composition import compose

    arrays = write_npy_images(tmp_path)
    overrides = [*npy_overrides(tmp_path), "data.batch_size=16", "+data.shuffle=false"]
    data = instantiate(compose("configs/image_classifier.yaml", overrides).data, "data")
    assert isinstance(data, GrainSource) and data.info["num_classes"] == 10
    assert data.info["steps_per_epoch"] == 4
    batch = data.train_batch(5)  # epoch 1, second batch: examples 16..31
    np.testing.assert_array_equal(batch["images"], arrays["train"][0][16:32])
    np.testing.assert_array_equal(batch["labels"], arrays["train"][1][16:32])
    evals = list(data.eval_batches())
    assert [len(b["labels"]) for b in evals] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in evals]), arrays["test"][0])


@pytest.mark.slow
def test_paxtrain_fit_trains_the_image_recipe_from_npy_with_grain_workers(tmp_path, capsys):
    from paxtrain.cli.app import main

    write_npy_images(tmp_path)
    run = [
        "trainer.max_steps=2", "optimizer.learning_rate.warmup_steps=0", "model.channels=[4]",
        "data.workers=1", f"run_dir={tmp_path / 'run'}", "trainer.progress=off",
    ]  # fmt: skip
    assert main(["fit", "configs/image_classifier.yaml", *npy_overrides(tmp_path), *run]) == 0
    assert "finished at step 2" in capsys.readouterr().out


def test_a_target_that_cannot_be_imported_names_the_key():
    with pytest.raises(DataError, match=r"`data.train._target_`: cannot import 'nope.examples'"):
        GrainSource({"_target_": "nope.examples"}, batch_size=4)


def test_uint8_images_are_scaled_and_a_channel_axis_added_as_documented(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 8, 8), np.uint8)  # [N, H, W]: no channel axis
    labels = rng.integers(0, 10, 24).astype(np.int64)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    columns = {"images": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")}
    info = {"num_classes": 10, "image_shape": [8, 8, 1]}
    data = GrainSource(columns, batch_size=8, eval=columns, shuffle=False, info=info)
    batch = data.train_batch(1)
    expected = images[8:16, :, :, None].astype(np.float64) / 255  # NumPy, in float64
    assert batch["images"].dtype == np.float32 and batch["images"].shape == (8, 8, 8, 1)
    np.testing.assert_allclose(batch["images"], expected, rtol=1e-7, atol=0)
    assert batch["images"].min() >= 0 and batch["images"].max() <= 1
    np.testing.assert_array_equal(batch["labels"], labels[8:16])
    evals = np.concatenate([b["images"] for b in data.eval_batches()])
    np.testing.assert_allclose(evals, images[..., None] / 255, rtol=1e-7, atol=0)
    # float images are taken as they are, a channel axis added when they have none
    np.save(tmp_path / "x.npy", images.astype(np.float32))
    data = GrainSource(columns, batch_size=8, shuffle=False, info=info)
    np.testing.assert_array_equal(data.train_batch(0)["images"], images[:8, :, :, None])


def test_more_workers_than_cores_warns_and_negative_workers_are_refused(monkeypatch):
    import paxtrain.data.grain_source
    from paxtrain.errors import ArgumentError

    monkeypatch.setattr(paxtrain.data.grain_source, "available_cores", lambda: 2)
    with pytest.warns(UserWarning, match=r"data.workers=64 is more than the 2 CPU cores.*=2"):
        GrainSource(examples(), batch_size=BATCH, workers=64)
    with pytest.raises(ArgumentError, match="workers=-1 is not a number of grain worker"):
        GrainSource(examples(), batch_size=BATCH, workers=-1)
