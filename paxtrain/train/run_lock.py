"""One writer per run directory: an advisory lock held while a run trains into it."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
from typing import Any

from paxtrain.errors import ConfigError

LOCK_FILE = ".paxtrain.lock"

IN_USE_MSG = (
    "run_dir={run_dir} is in use by another paxtrain run ({holder}): a run directory has one "
    "writer. Wait for that run to end or stop it, or train into another `run_dir=...`."
)


class RunLock:
    """An exclusive `flock` on `RUN_DIR/.paxtrain.lock`, held from `acquire` to `release`.

    The kernel drops the lock when its process ends, however it ends (SIGKILL included), so
    a stale lock file never blocks a resume. A multi-process job takes it once, in process 0.

    Example:
        >>> lock = RunLock("runs/demo")
        >>> lock.acquire()
        >>> RunLock("runs/demo").acquire()
        Traceback (most recent call last):
        ...
        paxtrain.errors.ConfigError: run_dir=runs/demo is in use by another paxtrain run (...)...
        >>> lock.release()
    """

    def __init__(self, run_dir: str | pathlib.Path):
        self.run_dir = pathlib.Path(run_dir)
        self._file: Any = None

    def acquire(self) -> None:
        """Takes the lock; raises ConfigError naming the holder if another process has it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        file = open(self.run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "holder unknown"
            file.close()
            raise ConfigError(IN_USE_MSG.format(run_dir=self.run_dir, holder=holder)) from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        """Drops the lock (the file stays: it is harmless once unlocked)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
