"""The `paxtrain` command line and what it builds: runs from configs, run directories,
sweeps and their launchers. Nothing in the library (`paxtrain.train`, `data`, `parallel`...)
imports it.

    >>> from paxtrain.cli import main
    >>> main(["env"])  # doctest: +SKIP
"""

from paxtrain.cli.app import main

__all__ = ["main"]
