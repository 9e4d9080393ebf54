"""Images and labels checked once at start-up, so that a run never trains on data it cannot learn.

A label outside [0, num_classes) or a NaN pixel makes every step that meets it non-finite, and
the trainer skips it: a run that learns nothing. These checks read each array once, a chunk at a
time (memory-mapped `.npy` files stay unloaded), and name the file, the example and the fix.

Columns named `images` and `labels` (the image recipe's batch keys, `configs/data/npy.yaml`) are
also taken as the model takes them: uint8 images are scaled to float32 in [0, 1] (as
torchvision's `ToTensor` does), and images without a channel axis ([N, H, W]) get one
([N, H, W, 1], grayscale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from paxtrain.data.columns import NpyColumns
from paxtrain.errors import DataError

CHUNK_ROWS = 4096

LABEL_DTYPE_MSG = """\
{where}: the labels are {dtype}, but labels are integer class ids in [0, num_classes): save them \
as integers, e.g. `np.save(path, labels.astype(np.int32))`."""

LABEL_SHAPE_MSG = """\
{where}: the labels have shape {shape}, but labels are one class id per example, shape [N]: save \
them flat, e.g. `np.save(path, labels.reshape(-1))`."""

LABEL_RANGE_MSG = """\
{where}: label {label} at example {index} ({count} labels outside [0, {num_classes})), but \
labels are class ids in [0, num_classes={num_classes}): the model cannot learn them. Set \
`data.info.num_classes` to the number of classes (at least {needed}), or fix the labels."""

NEGATIVE_LABEL_MSG = """\
{where}: label {label} at example {index} ({count} negative labels), but labels are class \
ids in [0, num_classes): the model cannot learn them. Fix the labels (e.g. map -1 to a class)."""

NONFINITE_IMAGE_MSG = """\
{where}: {count} images hold NaN or Inf values (the first: example {index}); every step \
that reads one would be skipped. Replace them (`np.nan_to_num`) or drop those examples."""

IMAGE_DTYPE_MSG = """\
{where}: the images are {dtype}, but images are float (taken as they are) or uint8 (scaled \
to [0, 1]). Save them as float32: `np.save(path, images.astype(np.float32))`."""

IMAGE_SHAPE_MSG = """\
{where}: the images have shape {shape}, but `data.info.image_shape` is {expected}: set \
`data.info.image_shape={fix}`, or save images of shape [N, {expected_list}]."""


def _chunks(array: np.ndarray):
    for start in range(0, len(array), CHUNK_ROWS):
        yield start, np.asarray(array[start : start + CHUNK_ROWS])


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raises a `DataError` unless `labels` are integers in [0, num_classes), one per example.

    Example:
        >>> check_labels(np.array([0, 2, 1]), 3, "labels")
        >>> check_labels(np.array([0, 3, 1]), 3, "data.train.labels")
        Traceback (most recent call last):
        ...
        paxtrain.errors.DataError: data.train.labels: label 3 at example 1 (1 labels outside ...
    """
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(LABEL_DTYPE_MSG.format(where=where, dtype=labels.dtype))
    if labels.ndim != 1:
        raise DataError(LABEL_SHAPE_MSG.format(where=where, shape=list(labels.shape)))
    low = high = None  # (label, index) of the first label below 0 / at or above num_classes
    below = above = 0
    for start, chunk in _chunks(labels):
        negative, large = chunk < 0, chunk >= num_classes
        below, above = below + int(negative.sum()), above + int(large.sum())
        if low is None and negative.any():
            low = (int(chunk[negative.argmax()]), start + int(negative.argmax()))
        if high is None and large.any():
            high = (int(chunk[large.argmax()]), start + int(large.argmax()))
    if low is not None:
        raise DataError(
            NEGATIVE_LABEL_MSG.format(where=where, label=low[0], index=low[1], count=below)
        )
    if high is not None:
        needed = max(int(np.asarray(c).max()) for _, c in _chunks(labels)) + 1
        raise DataError(
            LABEL_RANGE_MSG.format(
                where=where,
                label=high[0],
                index=high[1],
                count=above,
                num_classes=num_classes,
                needed=needed,
            )
        )


def check_finite_images(images: np.ndarray, where: str) -> None:
    """Raises a `DataError` if float `images` hold a NaN or an infinity (integers pass).

    Example:
        >>> check_finite_images(np.zeros((2, 4, 4, 1)), "images")
        >>> check_finite_images(np.full((2, 4, 4, 1), np.nan), "data.train.images")
        Traceback (most recent call last):
        ...
        paxtrain.errors.DataError: data.train.images: 2 images hold NaN or Inf values ...
    """
    if not np.issubdtype(images.dtype, np.floating):
        return
    first, count = None, 0
    for start, chunk in _chunks(images):
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        count += int(bad.sum())
        if first is None and bad.any():
            first = start + int(bad.argmax())
    if count:
        raise DataError(NONFINITE_IMAGE_MSG.format(where=where, count=count, index=first))


class ImageColumns(Sequence):
    """The examples of `columns` (e.g. `NpyColumns`), their `images` as the model takes them:
    uint8 scaled to float32 in [0, 1], a channel axis added to [H, W] images.

    Example:
        >>> rows = [{"images": np.full((2, 2), 255, np.uint8), "labels": np.int32(1)}]
        >>> ImageColumns(rows, scale=True, add_channel=True)[0]["images"].tolist()
        [[[1.0], [1.0]], [[1.0], [1.0]]]
    """

    def __init__(self, columns: Sequence, scale: bool, add_channel: bool):
        self.columns, self.scale, self.add_channel = columns, scale, add_channel

    def __len__(self) -> int:
        return len(self.columns)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = dict(self.columns[index])
        images = example["images"]
        if self.scale:
            images = images.astype(np.float32) / np.float32(255)
        if self.add_channel:
            images = images[..., None]
        example["images"] = images
        return example


def checked_image_columns(columns: NpyColumns, info: Mapping[str, Any], key: str) -> Sequence:
    """`columns` after checking its `images` and `labels` files (when present) against `info`
    (`num_classes`, `image_shape`), wrapped in `ImageColumns` where the images need adapting.

    Args:
      columns: the examples, read from one `.npy` file per column.
      info: what the model is told about the data.
      key: the config key of the columns, for messages (e.g. "data.train").

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> np.save(folder / "x.npy", np.zeros((3, 4, 4), np.uint8))
        >>> np.save(folder / "y.npy", np.array([0, 1, 1]))
        >>> columns = NpyColumns({"images": folder / "x.npy", "labels": folder / "y.npy"})
        >>> checked = checked_image_columns(columns, {"num_classes": 2}, "data.train")
        >>> checked[0]["images"].shape, checked[0]["images"].dtype
        ((4, 4, 1), dtype('float32'))
    """
    arrays = columns.arrays()
    where = {name: f"{key}.{name} ({path})" for name, path in columns.paths.items()}
    if "labels" in arrays and "num_classes" in info:
        check_labels(arrays["labels"], int(info["num_classes"]), where["labels"])
    if "images" not in arrays:
        return columns
    images = arrays["images"]
    scale = images.dtype == np.uint8
    if not scale and not np.issubdtype(images.dtype, np.floating):
        raise DataError(IMAGE_DTYPE_MSG.format(where=where["images"], dtype=images.dtype))
    check_finite_images(images, where["images"])
    add_channel = images.ndim == 3
    shape = [*images.shape[1:], 1] if add_channel else list(images.shape[1:])
    expected = info.get("image_shape")
    if expected is not None and list(expected) != shape:
        raise DataError(
            IMAGE_SHAPE_MSG.format(
                where=where["images"],
                shape=list(images.shape),
                expected=list(expected),
                fix=str(shape).replace(" ", ""),
                expected_list=", ".join(map(str, expected)),
            )
        )
    return ImageColumns(columns, scale, add_channel) if scale or add_channel else columns
