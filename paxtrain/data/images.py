"""Image classification data, step-indexed: the 8x8 digits that scikit-learn ships, or MNIST.

The digits need no download (scikit-learn is an optional dependency); MNIST is read from the
four IDX files of its distribution in a local directory.
"""

from __future__ import annotations

import gzip
import math
import pathlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from paxtrain.data.image_columns import check_finite_images, check_labels

# The IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number of
# dimensions, one big-endian uint32 per dimension, then the data in C order, big-endian.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DIGITS_TEST_SIZE = 360  # 20% of the 1797 digits
DIGITS_SPLIT_SEED = 0  # fixed, so every training seed is evaluated on the same test images
MAX_EVAL_BATCH_SIZE = 1000

SOURCES = ("digits", "mnist")

MISSING_IDX_MSG = """\
IDX file not found: {path} (nor {path}.gz).
`data.path` must be a directory holding the four MNIST files, gzipped or not: {names}."""

BAD_MAGIC_MSG = """\
{path} is not an IDX file: it starts with bytes {found}, but an IDX file starts with two zero \
bytes, a type code in {codes} and the number of dimensions.
Is it an HTML page saved by a failed download? Fetch the file again."""

SHORT_HEADER_MSG = """\
{path} is truncated: its header announces {ndim} dimensions but the file ends after {size} \
bytes. Fetch the file again."""

TRUNCATED_MSG = """\
{path} is truncated or corrupt: its header promises shape {shape} ({expected} bytes of data) but \
{found} bytes follow it. Fetch the file again."""

MISMATCH_MSG = """\
{images} holds {num_images} images but {labels} holds {num_labels} labels; the two files must \
come from the same split of the same data set."""

NO_PATH_MSG = """\
source="mnist" reads local IDX files: set `data.path` to the directory holding {names}."""

BAD_SOURCE_MSG = """\
Unknown image source {source!r}; choose one of {sources} (e.g. `data.source=digits`)."""

NO_SKLEARN_MSG = """\
The digits data set ships with scikit-learn, which is not installed. Install it with
    pip install scikit-learn        (or `pip install -e ".[recipes]"` in a paxtrain checkout)
or train on local MNIST files instead: `data.source=mnist data.path=/dir/with/idx/files`."""

BATCH_SIZE_MSG = """\
batch_size={batch_size} is larger than the {num_train} training images; lower `data.batch_size`."""

EVAL_BATCH_SIZE_MSG = """\
eval_batch_size={eval_batch_size} must be a positive number of test images; use e.g. 500, or null \
for min(test images, {max_size})."""


def read_idx(path: str | pathlib.Path) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or raw) into an array of its shape and native dtype.

    Args:
      path: the file; compression is recognised from its first bytes, not its name.

    Returns:
      The array, e.g. uint8 [60000, 28, 28] for MNIST's training images.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = file.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 2, 1]))
        >>> read_idx(file).tolist()
        [7, 2, 1]
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise ValueError(
            BAD_MAGIC_MSG.format(
                path=path, found=raw[:4].hex(" "), codes=[hex(c) for c in IDX_DTYPES]
            )
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(SHORT_HEADER_MSG.format(path=path, ndim=ndim, size=len(raw)))
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            TRUNCATED_MSG.format(path=path, shape=shape, expected=expected, found=len(raw) - header)
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


class ImageSplits(NamedTuple):
    """Train and test images [N, H, W, C] with integer labels [N], as stored (not normalized)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_digits() -> ImageSplits:
    """scikit-learn's 8x8 digits (values 0..16), split by a fixed permutation: 360 test images.

    Example:
        >>> splits = load_digits()
        >>> splits.train_images.shape, splits.test_images.shape
        ((1437, 8, 8, 1), (360, 8, 8, 1))
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise ImportError(NO_SKLEARN_MSG) from error
    digits = sklearn_digits()
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return ImageSplits(images[train], labels[train], images[test], labels[test])


def _find_idx(directory: pathlib.Path, name: str) -> pathlib.Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        MISSING_IDX_MSG.format(path=directory / name, names=", ".join(MNIST_FILES.values()))
    )


def load_mnist(path: str | pathlib.Path) -> ImageSplits:
    """MNIST (or any data set in its format, e.g. Fashion-MNIST) from its four IDX files.

    Args:
      path: directory holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
        `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or with `.gz`.

    Example:
        >>> load_mnist("~/data/mnist").train_images.shape  # doctest: +SKIP
        (60000, 28, 28, 1)
    """
    directory = pathlib.Path(path).expanduser()
    files = {key: _find_idx(directory, name) for key, name in MNIST_FILES.items()}
    arrays = {key: read_idx(file) for key, file in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(
                MISMATCH_MSG.format(
                    images=files[f"{split}_images"],
                    num_images=len(images),
                    labels=files[f"{split}_labels"],
                    num_labels=len(labels),
                )
            )
    return ImageSplits(
        _with_channel_axis(arrays["train_images"]),
        arrays["train_labels"].astype(np.int32),
        _with_channel_axis(arrays["test_images"]),
        arrays["test_labels"].astype(np.int32),
    )


def _with_channel_axis(images: np.ndarray) -> np.ndarray:
    """[N, H, W] grayscale images (MNIST's) as [N, H, W, 1]; [N, H, W, C] ones as they are."""
    return images[..., None] if images.ndim == 3 else images


def _channel_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, accumulated in float64 a chunk at a time."""
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].astype(np.float64)
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += np.square(chunk).sum(axis=(0, 1, 2))
    count = images[..., 0].size
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))


class LabeledImages:
    """Shuffled image batches indexed by step, and the test split in order.

    Batches are dicts `{"images": float32 [batch, H, W, C], "labels": int32 [batch]}`. Images
    are normalized per channel with the mean and standard deviation of the training split.

    Each epoch visits the training images in the order of a permutation drawn from
    `np.random.default_rng((seed, epoch))`; step `s` is batch `s % steps_per_epoch` of epoch
    `s // steps_per_epoch`, so `train_batch(step)` is a pure function of the step. An epoch has
    `num_examples // batch_size` steps: the remainder of each permutation is skipped (a
    different remainder every epoch).

    `eval_batches()` covers the test split exactly once, in order, in batches of
    `eval_batch_size`; the last one holds the remainder. The trainer weights each batch's metrics
    by its examples, so the result is the exact test accuracy whatever the batch size.

    Args:
      source: "digits" (scikit-learn's 8x8 digits, 1437 train / 360 test images, needs
        scikit-learn) or "mnist" (IDX files in `path`).
      path: the directory of the MNIST files; unused for "digits".
      batch_size: training examples per batch.
      eval_batch_size: test examples per eval batch (the last batch may be smaller); None takes
        the whole test split, up to 1000 images a batch.
      seed: seed of the epoch permutations.

    Example:
        >>> data = LabeledImages("digits", batch_size=32)
        >>> batch = data.train_batch(0)
        >>> batch["images"].shape, batch["labels"].dtype
        ((32, 8, 8, 1), dtype('int32'))
        >>> data.info
        {'num_classes': 10, 'image_shape': (8, 8, 1), 'num_examples': 1437, 'steps_per_epoch': 44}
    """

    def __init__(
        self,
        source: str = "digits",
        path: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ):
        if source not in SOURCES:
            raise ValueError(BAD_SOURCE_MSG.format(source=source, sources=SOURCES))
        if source == "mnist" and path is None:
            raise ValueError(NO_PATH_MSG.format(names=", ".join(MNIST_FILES.values())))
        splits = load_digits() if source == "digits" else load_mnist(path)
        # The classes are the labels seen: only a negative one is out of range.
        num_classes = int(max(splits.train_labels.max(), splits.test_labels.max())) + 1
        where = "the digits" if source == "digits" else f"the MNIST files in {path}"
        for split in ("train", "test"):
            images, labels = getattr(splits, f"{split}_images"), getattr(splits, f"{split}_labels")
            check_finite_images(images, f"The {split} split of {where}")
            check_labels(labels, num_classes, f"The {split} split of {where}")
        num_train, num_test = len(splits.train_labels), len(splits.test_labels)
        if batch_size > num_train:
            raise ValueError(BATCH_SIZE_MSG.format(batch_size=batch_size, num_train=num_train))
        if eval_batch_size is None:
            eval_batch_size = min(num_test, MAX_EVAL_BATCH_SIZE)
        elif eval_batch_size < 1:
            raise ValueError(
                EVAL_BATCH_SIZE_MSG.format(
                    eval_batch_size=eval_batch_size, max_size=MAX_EVAL_BATCH_SIZE
                )
            )
        self.splits = splits
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.steps_per_epoch = num_train // batch_size
        self.mean, self.std = _channel_moments(splits.train_images)
        self._permutation: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))
        self.info: dict[str, Any] = {
            "num_classes": num_classes,
            "image_shape": tuple(splits.train_images.shape[1:]),
            "num_examples": num_train,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Stored images -> float32 with zero mean and unit variance per channel (train split).

        Example:
            >>> data = LabeledImages("digits")
            >>> images = data.normalize(data.splits.train_images)
            >>> abs(float(images.mean())) < 1e-3, round(float(images.std()), 3)
            (True, 1.0)
        """
        return ((images - self.mean) / self.std).astype(np.float32)

    def batch_indices(self, step: int) -> np.ndarray:
        """Indices into the training split of the examples in step `step`'s batch.

        Example:
            >>> data = LabeledImages("digits", batch_size=100)
            >>> epoch = [data.batch_indices(step) for step in range(data.steps_per_epoch)]
            >>> len(set(np.concatenate(epoch).tolist()))  # 14 batches, no index twice
            1400
        """
        epoch, position = divmod(step, self.steps_per_epoch)
        cached_epoch, permutation = self._permutation  # one read: safe beside a prefetch thread
        if cached_epoch != epoch:
            num_train = len(self.splits.train_labels)
            permutation = np.random.default_rng((self.seed, epoch)).permutation(num_train)
            self._permutation = (epoch, permutation)
        return permutation[position * self.batch_size : (position + 1) * self.batch_size]

    def train_batch(self, step: int, rows: slice | None = None) -> dict[str, np.ndarray]:
        """The normalized training batch of `step`, a pure function of (seed, step); only its
        rows `rows` (read and normalized alone) if given.

        Example:
            >>> data = LabeledImages("digits", batch_size=4)
            >>> (data.train_batch(7)["labels"] == data.train_batch(7)["labels"]).all()
            np.True_
            >>> part = data.train_batch(7, rows=slice(1, 3))["labels"]
            >>> (part == data.train_batch(7)["labels"][1:3]).all()
            np.True_
        """
        indices = self.batch_indices(step)[rows or slice(None)]
        return {
            "images": self.normalize(self.splits.train_images[indices]),
            "labels": self.splits.train_labels[indices],
        }

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The test split once, in order, in batches of `eval_batch_size` (the last one ragged).

        Example:
            >>> data = LabeledImages("digits", eval_batch_size=100)
            >>> [len(batch["labels"]) for batch in data.eval_batches()]
            [100, 100, 100, 60]
        """
        for start in range(0, len(self.splits.test_labels), self.eval_batch_size):
            end = start + self.eval_batch_size
            yield {
                "images": self.normalize(self.splits.test_images[start:end]),
                "labels": self.splits.test_labels[start:end],
            }
