"""`benchmarks/memory_estimate.py --quick` (run by `benchmarks/gpu.sh`) measures and prints the
summary's estimate against the peak (on a CPU here: the goal is for a GPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.test_benchmarks_quick import ROOT


@pytest.mark.slow  # a benchmark's smoke run: with the others in the slow step
def test_memory_estimate_quick_prints_the_estimate_and_the_measured_peak():
    result = subprocess.run(
        [sys.executable, "benchmarks/memory_estimate.py", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    row = re.search(
        r"^\| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+)% \| live arrays", result.stdout, re.M
    )
    assert row is not None, result.stdout
    estimate, peak, error = (float(g) for g in row.groups())
    assert estimate > 0 and peak > 0
    assert abs(error) < 50  # a tiny model: the process's own noise is a fair share of its peak
    assert "137,216 parameters" in result.stdout
