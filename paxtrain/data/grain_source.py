"""`GrainSource`: a `grain.MapDataset` of examples as a step-indexed `DataSource`.

grain (`pip install -e ".[data]"`) reads the files (ArrayRecord, Parquet, `.npy`, your own) and
runs the transformations, in worker processes when asked; this adapter only decides which
examples make the batch of each step, as `LabeledImages` does: epoch `e` visits the examples in
the order of `np.random.default_rng((seed, e)).permutation(n)`, `n // batch_size` steps an epoch
(the remainder skipped, a different one each epoch), so the batch of a step is a pure function
of (seed, step). Resuming at step N reads the batches of N, N+1, ... again, exactly. (A permutation
per epoch costs one array of n ints; grain's per-element `shuffle` doubled the time per batch.)
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from paxtrain.data.columns import NpyColumns
from paxtrain.data.image_columns import checked_image_columns
from paxtrain.errors import ArgumentError, DataError

NO_GRAIN_MSG = """\
GrainSource needs grain, which is not installed: pip install grain    (or `pip install -e ".[data]"` \
in a paxtrain checkout)."""

BAD_DATASET_MSG = """\
data.{key} must be a grain.MapDataset, a mapping of column names to .npy files \
({{images: x.npy, labels: y.npy}}), or {{_target_: module.function}} returning a MapDataset; \
got {kind}."""

TOO_SHORT_MSG = """\
The training dataset has {n} examples, too few for one batch of batch_size={batch_size}: lower \
`data.batch_size` or give more data."""

BAD_TARGET_MSG = "`data.{key}._target_`: cannot import {target!r} ({reason})."

NEGATIVE_WORKERS_MSG = """\
workers={workers} is not a number of grain worker processes: use 0 (read in the trainer's \
prefetch thread) or more, e.g. `data.workers=2`."""

TOO_MANY_WORKERS_MSG = """\
data.workers={workers} is more than the {cores} CPU cores this process may use: the workers \
compete for them and batches come slower, not faster. Use `data.workers={cores}` or fewer."""

EMPTY_EVAL_MSG = "The eval dataset is empty: give it examples, or leave `data.eval` unset."


def _grain() -> Any:
    try:
        import grain
    except ImportError as error:
        raise ImportError(NO_GRAIN_MSG) from error
    return grain


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one).

    Example:
        >>> available_cores() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _parse_absl_flags() -> None:
    # grain 0.2.18's workers read an absl flag, which fails unless flags were parsed
    # (google/grain#1355): a program that does not use absl.app leaves them at their defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def as_map_dataset(spec: Any, key: str = "train", info: Mapping[str, Any] | None = None) -> Any:
    """A `grain.MapDataset` from what a config or a caller gives: the dataset itself, a mapping
    of column names to `.npy` files (`NpyColumns`), or `{"_target_": "module.fn", **kwargs}`
    naming a function that returns one (any reader: ArrayRecord, Parquet, ...).

    `.npy` columns named `images` and `labels` are checked against `info` (`num_classes`,
    `image_shape`) and adapted to the model (`checked_image_columns`).

    Example:
        >>> import grain
        >>> len(as_map_dataset(grain.MapDataset.range(5)))
        5
    """
    grain = _grain()
    if isinstance(spec, grain.MapDataset):
        return spec
    if isinstance(spec, Mapping) and "_target_" in spec:
        dataset = _call_target(spec, key)
        if isinstance(dataset, grain.MapDataset):
            return dataset
        raise DataError(BAD_DATASET_MSG.format(key=key, kind=f"{type(dataset).__name__} from it"))
    if isinstance(spec, Mapping):
        columns = NpyColumns(spec, key=f"data.{key}")
        return grain.MapDataset.source(checked_image_columns(columns, info or {}, f"data.{key}"))
    raise DataError(BAD_DATASET_MSG.format(key=key, kind=type(spec).__name__))


def _call_target(spec: Mapping, key: str) -> Any:
    """What the function a `{"_target_": "module.fn", **kwargs}` spec names returns, called
    by Hydra's `instantiate` as the config's other `_target_`s are; errors of the function
    itself are its own."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(dict(spec), _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__
        if cause is not None and not isinstance(cause, ImportError):
            raise cause from None
        reason = " ".join(str(cause or error).split())
        raise DataError(
            BAD_TARGET_MSG.format(key=key, target=spec["_target_"], reason=reason)
        ) from None


class _RowsOfStep:
    """`step -> rows of the batch of step`: which examples (a seeded permutation per epoch),
    read through the grain dataset and stacked. Picklable, for grain's workers."""

    def __init__(self, train: Any, batch_size: int, rows: slice, seed: int, shuffle: bool):
        self.train, self.batch_size, self.rows = train, batch_size, rows
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = len(train) // batch_size
        self._permutation: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        batch = np.arange(position * self.batch_size, (position + 1) * self.batch_size)[self.rows]
        if not self.shuffle:
            return batch
        cached_epoch, permutation = self._permutation  # one read: safe beside a prefetch thread
        if cached_epoch != epoch:
            permutation = np.random.default_rng((self.seed, epoch)).permutation(len(self.train))
            self._permutation = (epoch, permutation)
        return permutation[batch]

    def __call__(self, step: int) -> Any:
        examples = [self.train[int(i)] for i in self.indices(step)]
        return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *examples)


class GrainSource:
    """Batches of a `grain.MapDataset` of examples, indexed by step; eval from a second one.

    Args:
      train: the training examples: a `grain.MapDataset` (random access), a mapping of column
        names to `.npy` files, or `{_target_: module.function, ...}` returning a MapDataset.
      batch_size: examples per training batch.
      eval: the evaluation examples, the same kinds as `train`; None: no evaluation.
      eval_batch_size: examples per eval batch (the last one ragged; the trainer weights it);
        None: `batch_size`.
      seed: seed of the epoch permutations.
      shuffle: shuffle the training examples (every epoch anew).
      workers: grain worker processes producing batches ahead (`mp_prefetch`); 0 reads in the
        calling thread (the trainer's prefetch thread). Batches are the same either way. More
        workers than the CPU cores the process may use get a warning: they would compete.
      info: facts the model's constructor may ask for, e.g. `{num_classes: 10}`; `.npy`
        columns `labels` and `images` are checked against its `num_classes` and `image_shape`.

    Example:
        >>> import grain, numpy as np
        >>> examples = grain.MapDataset.range(10).map(lambda i: {"x": np.float32(i)})
        >>> data = GrainSource(examples, batch_size=5, eval=examples, eval_batch_size=4)
        >>> epoch = np.concatenate([data.train_batch(0)["x"], data.train_batch(1)["x"]])
        >>> sorted(epoch.tolist()) == list(range(10))  # one epoch: every example once
        True
        >>> [len(b["x"]) for b in data.eval_batches()]
        [4, 4, 2]
    """

    def __init__(
        self,
        train: Any,
        batch_size: int = 32,
        eval: Any = None,
        eval_batch_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        workers: int = 0,
        info: Mapping[str, Any] | None = None,
    ):
        if workers < 0:
            raise ArgumentError("workers", NEGATIVE_WORKERS_MSG.format(workers=workers))
        if workers > (cores := available_cores()):
            warnings.warn(TOO_MANY_WORKERS_MSG.format(workers=workers, cores=cores), stacklevel=2)
        train = as_map_dataset(train, "train", info)
        if len(train) < batch_size:
            raise DataError(TOO_SHORT_MSG.format(n=len(train), batch_size=batch_size))
        self.eval = None if eval is None else as_map_dataset(eval, "eval", info)
        if self.eval is not None and len(self.eval) == 0:
            raise DataError(EMPTY_EVAL_MSG)
        self.train, self.num_examples, self.seed, self.shuffle = train, len(train), seed, shuffle
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self._readers: dict[tuple, _RowsOfStep] = {}  # by rows: each caches its permutation
        self.workers = workers
        if workers:
            atexit.register(self.close)  # the workers' shared memory is released at exit
        # With workers: grain's iterator, the (step, rows) it yields next, the last batch read.
        self._stream: Any = None
        self._next: tuple[int, slice] | None = None
        self._last: tuple[int | None, slice | None, Any] = (None, None, None)
        self.info = {
            "num_examples": self.num_examples,
            "steps_per_epoch": self.num_examples // batch_size,
            **(info or {}),
        }

    def _reader(self, rows: slice) -> _RowsOfStep:
        key = (rows.start, rows.stop, rows.step)
        if key not in self._readers:
            self._readers[key] = _RowsOfStep(
                self.train, self.batch_size, rows, self.seed, self.shuffle
            )
        return self._readers[key]

    def steps(self, rows: slice | None = None) -> Any:
        """The `grain.MapDataset` whose item `step` is (rows `rows` of) the batch of `step`.

        Example:
            >>> data.steps()[7]["x"].shape  # doctest: +SKIP
            (4,)
        """
        grain = _grain()
        read = self._reader(rows or slice(None))
        return grain.MapDataset.range(sys.maxsize // self.batch_size).map(read)

    def train_batch(self, step: int, rows: slice | None = None) -> Any:
        """The batch of `step`, or only its rows `rows` (only those examples are read).

        With `workers`, consecutive steps come from grain's worker processes; a step out of
        sequence (a resume, a rollback) is read here and the workers start again after it.

        Example:
            >>> data.train_batch(3, rows=slice(0, 2))["x"].shape  # doctest: +SKIP
            (2,)
        """
        rows = rows or slice(None)
        if not self.workers:
            return self._reader(rows)(step)
        if self._last[:2] == (step, rows):  # the trainer reads step 0 twice: shape check, loop
            return self._last[2]
        if self._next != (step, rows):
            # Out of sequence (the first read, a resume, a rollback): read it here, and let the
            # workers start from the step after it, if that is the one asked for next.
            self.close()
            batch = self._reader(rows)(step)
        else:
            if self._stream is None:
                _parse_absl_flags()
                grain = _grain()
                options = grain.MultiprocessingOptions(num_workers=self.workers)
                self._stream = iter(self.steps(rows)[step:].to_iter_dataset().mp_prefetch(options))
            batch = next(self._stream)
        self._next, self._last = (step + 1, rows), (step, rows, batch)
        return batch

    def eval_batches(self) -> Iterator[Any]:
        """The eval dataset once, in order, in batches of `eval_batch_size` (the last ragged).

        Example:
            >>> [len(b["x"]) for b in data.eval_batches()]  # doctest: +SKIP
            [4, 4, 2]
        """
        if self.eval is None:
            return
        batches = self.eval.batch(self.eval_batch_size)
        for i in range(len(batches)):
            yield batches[i]

    def close(self) -> None:
        """Stops grain's worker processes, if any are running.

        Example:
            >>> data.close()  # doctest: +SKIP
        """
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()
