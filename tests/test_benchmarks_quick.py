"""The benchmarks' `--quick` modes run to the end and print their tables (they write nothing)."""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def run_quick(script: str) -> str:
    """Runs `benchmarks/<script> --quick` as a user would; returns its output."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_transformer_mfu_quick():
    out = run_quick("transformer_mfu.py")
    for name in ("raw JAX", "paxtrain"):
        # | implementation | ms/step | tokens/s | MFU | throughput vs raw JAX |
        row = re.search(rf"^\| {re.escape(name)} \| [\d.]+ \| ([\d,.]+) \|", out, re.M)
        assert row is not None, out
        tokens_per_second = float(row.group(1).replace(",", ""))
        assert math.isfinite(tokens_per_second) and tokens_per_second > 0, out


@pytest.mark.slow  # benchmark smoke runs, all in the slow step with the other subprocess runs
def test_overhead_quick_measures_the_trainer_step_returning_the_state():
    out = run_quick("overhead.py")
    for name in ("raw JAX", "paxtrain TrainStep(state)", "paxtrain Trainer (defaults, flat)"):
        row = re.search(rf"^\| {re.escape(name)} \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
        assert row is not None and float(row.group(1)) > 0, out


@pytest.mark.slow
def test_scan_layers_quick_compiles_both_variants_with_equal_losses():
    out = run_quick("scan_layers.py")
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 2], out
    assert all(r[3] == r[4] for r in rows), out


def test_lora_memory_quick_counts_the_adapters_and_their_moments():
    out = run_quick("lora_memory.py")  # the script checks the counts against the formulas
    ratios = re.findall(r"^\| tiny \(2 x 32\) \| (.+?) \| .* \| ([\d.]+) \|$", out, re.M)
    assert [name for name, _ in ratios][:2] == ["full fine-tune", "LoRA r=8, q, v"], out
    assert 0 < float(ratios[1][1]) < 0.1, out


@pytest.mark.slow
def test_gpu_script_runs_every_measurement_in_quick_mode():
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for heading in ("| implementation | ms/step |", "| implementation | µs/step |", "| call |"):
        assert heading in result.stdout, result.stdout
    assert result.stdout.count("| implementation | ms/step |") == 3  # scanned, unscanned, xla
