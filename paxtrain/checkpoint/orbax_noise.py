"""Orbax's log lines about what the checkpoint store does on purpose, kept out of a run's output.

The store reports every failure itself, once, as a `CheckpointError` or a warning naming the
step; Orbax, asyncio and tensorstore would report the same failure again, many times, and warn
about a reader opening a directory read-only. Importing this module installs the filters.

    >>> quiet_closed_event_loops()  # idempotent: the hook is installed once
    >>> sys.unraisablehook.paxtrain_quiet
    True
"""

from __future__ import annotations

import logging
import sys
from typing import Any

# Orbax warnings about what the store does on purpose: saving at a step without evaluation
# (kept by `keep_last` only) and opening a directory read-only (a reader).
_EXPECTED_ORBAX_WARNINGS = (
    "did not provide metrics", "read_only=True", "directory is read only",
    # a record this module reads by its item handler alone (`meta`), and the finalization of
    # a save whose directory vanished (warned about, in one line)
    "Metadata file does not exist",
)  # fmt: skip


class _QuietExpectedWarnings(logging.Filter):
    """Drops those warnings, and Orbax's errors: a failed save is raised again as one
    CheckpointError naming the save and the last good checkpoint (or warned about once, when
    its directory vanished), an unreadable checkpoint is named by the restore."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.pathname and record.levelno >= logging.ERROR:
            return False
        return not any(text in record.getMessage() for text in _EXPECTED_ORBAX_WARNINGS)


class _QuietOrbaxTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for Orbax's writer tasks: each
    failed array write of a failed save, which the CheckpointError already reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("never retrieved" in record.getMessage() and "orbax" in record.getMessage())


logging.getLogger("absl").addFilter(_QuietExpectedWarnings())


logging.getLogger("asyncio").addFilter(_QuietOrbaxTasks())


def quiet_closed_event_loops() -> None:
    """After a failed save, the writer threads of tensorstore still finishing it call into
    event loops Orbax has closed: "Exception ignored ... Event loop is closed", once per write,
    about the failure already reported. Those alone are dropped; other unraisable errors pass.

    Example:
        >>> quiet_closed_event_loops()
    """
    previous = sys.unraisablehook
    if getattr(previous, "paxtrain_quiet", False):
        return

    def hook(info: Any) -> None:
        if not (
            isinstance(info.exc_value, RuntimeError)
            and "Event loop is closed" in str(info.exc_value)
        ):
            previous(info)

    hook.paxtrain_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


quiet_closed_event_loops()
