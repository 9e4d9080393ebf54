"""`trainer.compile_cache`: JAX's persistent compilation cache, on by default.

A second run of the same program (a resume, a sweep's next job, a rerun after a crash) loads
the compiled step from disk instead of compiling it again. "auto" (the default) uses
`$XDG_CACHE_HOME/paxtrain/jax` (`~/.cache/paxtrain/jax`), unless JAX already has a cache
directory (`JAX_COMPILATION_CACHE_DIR`), which then wins; a path uses that directory; None
leaves JAX's setting as it is. In a directory paxtrain chooses, every program is cached
(`jax_persistent_cache_min_compile_time_secs` 0 unless its environment variable is set): the
many small programs of a model's initialization add up to seconds on a CPU, and a directory of
its own does not fill another cache. Measured in `benchmarks/compile_cache.py`.

    >>> enable_compile_cache("runs/jax-cache")  # doctest: +SKIP
    PosixPath('runs/jax-cache')
    >>> enable_compile_cache(None) is None  # off, unless JAX was given a directory elsewhere
    True
"""

from __future__ import annotations

import os
import pathlib

import jax

AUTO = "auto"
MIN_COMPILE_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def default_cache_dir() -> pathlib.Path:
    """The user's cache directory for paxtrain's compiled programs.

    Example:
        >>> default_cache_dir().parts[-2:]
        ('paxtrain', 'jax')
    """
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "paxtrain" / "jax"


def _several_cpu_devices() -> bool:
    # A cached program with collectives over several CPU devices (the virtual devices of
    # --xla_force_host_platform_device_count) deadlocks in JAX 0.10 when loaded from the cache:
    # its all-gather waits forever for participants (seen with FSDP over 8 devices, a warm
    # cache). Such runs compile every time instead.
    return jax.default_backend() == "cpu" and jax.local_device_count() > 1


def enable_compile_cache(directory: str | os.PathLike | None = AUTO) -> pathlib.Path | None:
    """Points JAX's persistent compilation cache at `directory` (see the module docstring);
    returns the directory in use, or None when the cache is left off.

    The setting is process-wide and read by JAX at the first compilation that uses the cache.
    Left off on several CPU devices, where JAX 0.10 deadlocks in collectives of cached programs.
    """
    if directory is None or _several_cpu_devices():
        return None
    if directory == AUTO:
        if jax.config.jax_compilation_cache_dir:
            return pathlib.Path(jax.config.jax_compilation_cache_dir)
        directory = default_cache_dir()
    path = pathlib.Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    if MIN_COMPILE_TIME_ENV not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
