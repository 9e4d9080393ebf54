"""Examples stored column-wise in `.npy` files, read lazily through memory maps.

`NpyColumns({"images": "x.npy", "labels": "y.npy"})[i]` is `{"images": x[i], "labels": y[i]}`:
a random-access sequence that `grain.MapDataset.source` accepts. Each process (and each grain
worker) maps the files itself, so nothing but the rows read is loaded or pickled.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from paxtrain.errors import DataError

MISSING_NPY_MSG = """\
{key}: file not found: {path}
Give the path of a .npy file (relative paths start where paxtrain runs), e.g. `{key}=data/x.npy`."""

NOT_NPY_MSG = """\
{key}: {path} is not a .npy file. Columns from YAML are .npy files (`np.save`); for ArrayRecord \
or Parquet, name a function returning a grain.MapDataset: `{{_target_: my_project.data.train}}`."""

LENGTHS_MSG = """\
The columns have different lengths ({lengths}): each .npy file must hold one row per example."""

EMPTY_COLUMNS_MSG = (
    "No columns given: map names to .npy files, e.g. {images: x.npy, labels: y.npy}."
)


class NpyColumns(Sequence):
    """Rows `i` of several `.npy` files (the same length), as a dict per example.

    Args:
      paths: column name -> `.npy` file.
      key: where the mapping came from, for messages (e.g. "data.train").

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> np.save(folder / "x.npy", np.arange(6).reshape(3, 2))
        >>> np.save(folder / "y.npy", np.array([7, 8, 9]))
        >>> rows = NpyColumns({"x": folder / "x.npy", "y": folder / "y.npy"})
        >>> len(rows), rows[1]["x"].tolist(), int(rows[1]["y"])
        (3, [2, 3], 8)
    """

    def __init__(self, paths: Mapping[str, str | pathlib.Path], key: str = "columns"):
        if not paths:
            raise DataError(EMPTY_COLUMNS_MSG)
        self.paths = {}
        for name, path in paths.items():
            file = pathlib.Path(path).expanduser()
            where = f"{key}.{name}"
            if file.suffix != ".npy":
                raise DataError(NOT_NPY_MSG.format(key=where, path=file))
            if not file.is_file():
                raise FileNotFoundError(MISSING_NPY_MSG.format(key=where, path=file))
            self.paths[name] = file
        lengths = {name: len(array) for name, array in self.arrays().items()}
        if len(set(lengths.values())) > 1:
            raise DataError(LENGTHS_MSG.format(lengths=lengths))
        self._length = next(iter(lengths.values()))
        self._arrays: dict[str, np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """Each column's whole array, memory-mapped (nothing is read until indexed)."""
        return {name: np.load(path, mmap_mode="r") for name, path in self.paths.items()}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = self.arrays()
        return {name: np.asarray(array[index]) for name, array in self._arrays.items()}

    def __getstate__(self) -> dict[str, Any]:
        # Workers map the files again instead of receiving their contents.
        return {**self.__dict__, "_arrays": None}
