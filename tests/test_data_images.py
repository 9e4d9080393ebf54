"""Image classification data: the IDX reader, MNIST files and scikit-learn's digits, by step."""

import doctest
import gzip
import sys

import numpy as np
import pytest

import paxtrain.data.images
from paxtrain.data.images import LabeledImages, load_digits, load_mnist, read_idx

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path, array, compress=False):
    """The IDX format written from its definition, independently of the reader."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_fake_mnist(directory, num_train=24, num_test=12, size=6):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (num_train, size, size), np.uint8),
        "train-labels-idx1-ubyte": np.arange(num_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, size, size), np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.arange(num_test, dtype=np.uint8) % 10,
    }
    for name, array in files.items():
        write_idx(directory / name, array, compress=name.endswith(".gz"))
    return files


@pytest.fixture(scope="module")
def digits():
    return LabeledImages("digits", batch_size=100, eval_batch_size=120)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32])
def test_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / "array-idx3", array, compress)
    loaded = read_idx(tmp_path / "array-idx3")
    assert loaded.dtype == np.dtype(dtype) and loaded.shape == (2, 3, 4)
    np.testing.assert_array_equal(loaded, array)


def test_idx_errors_on_bad_magic_and_truncation(tmp_path):
    (tmp_path / "page").write_bytes(b"<html><body>Not Found</body></html>")
    with pytest.raises(ValueError, match="is not an IDX file: it starts with bytes 3c 68 74 6d"):
        read_idx(tmp_path / "page")
    write_idx(tmp_path / "short", np.zeros((4, 5), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"promises shape \(4, 5\) \(20 bytes of data\) but 17"):
        read_idx(tmp_path / "short")
    (tmp_path / "short").write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(ValueError, match="announces 3 dimensions but the file ends after 6 bytes"):
        read_idx(tmp_path / "short")


def test_mnist_files_raw_or_gzipped(tmp_path):
    files = write_fake_mnist(tmp_path)
    splits = load_mnist(tmp_path)
    assert splits.train_images.shape == (24, 6, 6, 1) and splits.test_labels.dtype == np.int32
    np.testing.assert_array_equal(splits.train_images[..., 0], files["train-images-idx3-ubyte.gz"])
    data = LabeledImages("mnist", path=str(tmp_path), batch_size=8, eval_batch_size=4)
    assert data.info == {
        "num_classes": 10,
        "image_shape": (6, 6, 1),
        "num_examples": 24,
        "steps_per_epoch": 3,
    }
    labels = np.concatenate([b["labels"] for b in data.eval_batches()])
    np.testing.assert_array_equal(labels, np.arange(12) % 10)


def test_mnist_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="set `data.path` to the directory"):
        LabeledImages("mnist")
    with pytest.raises(ValueError, match=r"Unknown image source 'cifar'.*data.source=digits"):
        LabeledImages("cifar")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte \\(nor .*\\.gz\\)"):
        load_mnist(tmp_path)
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))  # found before .gz
    with pytest.raises(ValueError, match="holds 12 images but .* holds 5 labels"):
        load_mnist(tmp_path)


def test_digits_split_is_fixed_and_disjoint():
    first, second = load_digits(), load_digits()
    np.testing.assert_array_equal(first.test_images, second.test_images)
    assert first.train_images.shape == (1437, 8, 8, 1) and first.test_labels.shape == (360,)
    train = {img.tobytes() for img in first.train_images}
    assert sum(img.tobytes() in train for img in first.test_images) == 0
    assert np.bincount(first.test_labels).min() >= 25  # every class is tested


def test_digits_batches_are_normalized_and_a_pure_function_of_step(digits):
    batch = digits.train_batch(5)
    assert batch["images"].shape == (100, 8, 8, 1) and batch["images"].dtype == np.float32
    assert batch["labels"].shape == (100,) and batch["labels"].dtype == np.int32
    again = LabeledImages("digits", batch_size=100).train_batch(5)
    np.testing.assert_array_equal(batch["images"], again["images"])
    assert not np.array_equal(batch["labels"], digits.train_batch(6)["labels"])
    images = digits.normalize(digits.splits.train_images)
    np.testing.assert_allclose([images.mean(), images.std()], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(digits.mean, [digits.splits.train_images.mean()])


def test_each_epoch_is_a_new_permutation(digits):
    assert digits.steps_per_epoch == 14  # 1437 // 100; 37 images skipped, different each epoch
    epochs = [
        np.concatenate([digits.batch_indices(e * 14 + i) for i in range(14)]) for e in range(2)
    ]
    for indices in epochs:
        assert len(np.unique(indices)) == 1400
    assert not np.array_equal(epochs[0], epochs[1])
    exact = LabeledImages("digits", batch_size=479)  # 1437 = 3 * 479: every image once
    indices = np.concatenate([exact.batch_indices(step) for step in (3, 4, 5)])
    np.testing.assert_array_equal(np.sort(indices), np.arange(1437))
    batch = digits.train_batch(20)
    np.testing.assert_array_equal(batch["labels"], digits.splits.train_labels[epochs[1][600:700]])


def test_eval_covers_the_test_split_once_with_a_ragged_last_batch():
    digits = LabeledImages("digits", batch_size=100, eval_batch_size=100)
    batches = list(digits.eval_batches())
    assert [len(b["labels"]) for b in batches] == [100, 100, 100, 60]
    images = np.concatenate([b["images"] for b in batches])
    np.testing.assert_allclose(images, digits.normalize(digits.splits.test_images))
    labels = np.concatenate([b["labels"] for b in batches])
    np.testing.assert_array_equal(labels, digits.splits.test_labels)
    assert LabeledImages("digits").eval_batch_size == 360  # default: the whole split, <= 1000
    with pytest.raises(ValueError, match="eval_batch_size=0 must be a positive number"):
        LabeledImages("digits", eval_batch_size=0)
    with pytest.raises(ValueError, match="batch_size=2000 is larger than the 1437"):
        LabeledImages("digits", batch_size=2000)


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install scikit-learn.*\.\[recipes\]"):
        load_digits()


def test_docstring_examples_run():
    result = doctest.testmod(paxtrain.data.images, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_mnist_files_with_a_channel_axis_keep_it(tmp_path):
    files = write_fake_mnist(tmp_path)
    color = np.stack([files["t10k-images-idx3-ubyte"]] * 3, axis=-1)  # [N, H, W, 3]
    write_idx(tmp_path / "t10k-images-idx3-ubyte", color)
    np.testing.assert_array_equal(load_mnist(tmp_path).test_images, color)
