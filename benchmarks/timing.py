"""Timing jitted calls: per call, and interleaved medians so drift affects every runner alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def time_per_call(run: Callable[[], jax.Array], calls: int) -> float:
    """Seconds per call of `run`, after one warm-up call, waiting for the last result.

    Example:
        >>> time_per_call(lambda: jnp.ones(3), 10)  # doctest: +SKIP
    """
    run().block_until_ready()
    start = time.perf_counter()
    for _ in range(calls):
        out = run()
    out.block_until_ready()
    return (time.perf_counter() - start) / calls


def interleaved(
    runners: dict[str, Callable[[], jax.Array]], rounds: int, calls: int | dict[str, int]
) -> dict[str, float]:
    """Median seconds per call of each runner over `rounds` rounds that take turns.

    `calls` is a count, or counts by runner name with a "default".

    Example:
        >>> interleaved({"a": run_a, "b": run_b}, rounds=5, calls=100)  # doctest: +SKIP
    """
    per_runner = calls if isinstance(calls, dict) else {"default": calls}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(time_per_call(run, per_runner.get(name, per_runner["default"])))
    return {name: statistics.median(v) for name, v in samples.items()}
