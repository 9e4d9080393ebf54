"""Work between steps that takes as long as it takes (an evaluation, a checkpoint save or
restore): the trainer runs it inside `pause()`, so that the step watchdog's clock stops and the
utilisation hook's step rate leaves it out.

Example:
    >>> with pause():
    ...     pass
    >>> paused() or total_seconds() >= 0
    True
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_last_end = 0.0
_total = 0.0
_started = 0.0


@contextlib.contextmanager
def pause() -> Iterator[None]:
    """Marks the block as work between steps (nested blocks count once).

    Example:
        >>> with pause():
        ...     paused()
        True
    """
    global _depth, _last_end, _total, _started
    with _lock:
        if _depth == 0:
            _started = time.monotonic()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _last_end = time.monotonic()
                _total += _last_end - _started


def paused() -> bool:
    """Whether a `pause()` block is running now.

    Example:
        >>> paused()
        False
    """
    return _depth > 0


def last_end() -> float:
    """`time.monotonic()` at the end of the latest `pause()` block (0.0: none yet).

    Example:
        >>> with pause():
        ...     pass
        >>> last_end() <= time.monotonic()
        True
    """
    return _last_end


def total_seconds() -> float:
    """Seconds spent in `pause()` blocks so far, in this process.

    Example:
        >>> before = total_seconds()
        >>> with pause():
        ...     time.sleep(0.01)
        >>> total_seconds() - before >= 0.01
        True
    """
    return _total
