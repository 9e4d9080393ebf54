"""The data contract of the trainer, and a background prefetcher for it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class DataSource(Protocol):
    """What the trainer needs from a dataset.

    `train_batch(step)` must be deterministic in `step` (and the source's seed): resuming at
    step N then continues the stream exactly, with nothing to replay. `info` carries facts the
    model may need (`vocab_size`, `num_classes`, ...), passed to the model's constructor when its
    signature asks for them.

    A source that can read part of a batch alone accepts `train_batch(step, rows=slice)` and
    returns exactly rows `rows` of the full batch of `step` (the same values), so each process
    of a multi-process run reads only its own rows. Every source in `paxtrain.data` does; a
    source without the `rows` keyword gets its full batch sliced.

    Example:
        >>> batch = data.train_batch(0)                   # doctest: +SKIP
        >>> metrics = [eval_step(model, b) for b in data.eval_batches()]  # doctest: +SKIP
    """

    info: dict[str, Any]

    def train_batch(self, step: int) -> Any: ...  # optionally `rows: slice | None = None`

    def eval_batches(self) -> Iterator[Any]: ...


class Prefetcher:
    """Produces `source.train_batch(step)` for consecutive steps on a background thread.

    Args:
      source: the data source.
      start_step: first step to produce.
      group: batches per item; each item stacks `group` consecutive batches along a new leading
        axis (for `steps_per_call`); single batches when `group` is None.
      put: applied to each item on the background thread, e.g. `jax.device_put`, so the
        host-to-device copy overlaps with compute.
      depth: how many items to prepare ahead.

    Example:
        >>> with Prefetcher(data, start_step=100) as batches:  # doctest: +SKIP
        ...     batch = next(batches)                           # the batch of step 100
    """

    def __init__(
        self,
        source: DataSource,
        start_step: int,
        group: int | None = None,
        put: Callable[[Any], Any] = lambda batch: batch,
        depth: int = 2,
    ):
        self._source = source
        self._put = put
        self._next_step = start_step
        self._group = group
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="paxtrain-prefetch")
        self._thread.start()

    def _make(self, step: int) -> Any:
        if self._group is None:
            return self._put(self._source.train_batch(step))
        batches = [self._source.train_batch(step + i) for i in range(self._group)]
        return self._put(jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches))

    def _fill(self) -> None:
        step = self._next_step
        while not self._stop.is_set():
            try:
                item = ("ok", self._make(step))
            except Exception as error:  # handed to the consumer, which raises it
                item = ("error", error)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return
            step += self._group or 1

    def __next__(self) -> Any:
        kind, value = self._queue.get()
        if kind == "error":
            raise value
        return value

    def __iter__(self) -> Prefetcher:
        return self

    def close(self) -> None:
        """Stops the background thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
