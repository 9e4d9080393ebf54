"""The errors paxtrain reports to its user: one base class, one subclass per kind of problem.

Each carries one message that names the problem and the fix; the `paxtrain` command reports it
in one line, without a traceback, and exits with code 2 (`LaunchError`: 1). The library layers
(`train/`, `data/`, `parallel/`, `checkpoint/`) raise these, so none of them imports the
configuration or command-line layers to do so.

    >>> from paxtrain.errors import ConfigError, PaxtrainError
    >>> issubclass(ConfigError, PaxtrainError) and issubclass(ConfigError, ValueError)
    True
"""

from __future__ import annotations


class PaxtrainError(Exception):
    """A problem paxtrain explains in one message; `except PaxtrainError` catches every kind."""


class ConfigError(PaxtrainError, ValueError):
    """A config problem, reported to the user as one message (exit code 2 on the CLI)."""


class DataError(PaxtrainError, ValueError):
    """A data set that cannot be used as configured (empty, corrupt, too short, ids out of the
    vocabulary); its message names the file and the fix. `paxtrain` reports it in one line and
    exits with code 2."""


class LayoutError(PaxtrainError, ValueError):
    """A device layout that cannot work: a mesh, a batch or a sharding rule that does not fit.

    Its message names the fix; the `paxtrain` command line reports it without a traceback.
    """


class CheckpointError(PaxtrainError, RuntimeError):
    """A checkpoint could not be saved or restored; the message says which and what to do."""


class LaunchError(PaxtrainError, RuntimeError):
    """Submitted jobs failed; the message names each one and its log file."""


class ArgumentError(PaxtrainError, ValueError):
    """An argument outside its domain, raised by the constructor that the Python API calls.

    `argument` names the parameter, so that the config layer, which checks no rule itself,
    can name the config key that set it (`trainer.max_steps`, not `max_steps`).

    Example:
        >>> error = ArgumentError("max_steps", "max_steps (10) must be a multiple of 3.")
        >>> error.argument, str(error)
        ('max_steps', 'max_steps (10) must be a multiple of 3.')
    """

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument
