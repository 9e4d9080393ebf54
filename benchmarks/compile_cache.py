"""Time to the first training step of `paxtrain fit configs/char_rnn.yaml`, with JAX's persistent
compilation cache cold (an empty directory) and warm (filled by the previous run).

    python benchmarks/compile_cache.py            # 3 cold/warm pairs, interleaved
    python benchmarks/compile_cache.py --pairs 1

Each run is a fresh `python -m paxtrain fit` process, timed from its start to the progress line
of step 1 (imports, data, model, compilation and the first step: what a user waits for). The
section "Compile cache" of RESULTS.md is rewritten.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from report import machine_line, section_title, write_section  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = [
    "trainer.progress=log", "trainer.log_every=1", "trainer.max_steps=2", "trainer.eval_every=null",
    "trainer.plot=false", "trainer.checkpoint.enabled=false", "callbacks=[]",
    "optimizer.learning_rate.warmup_steps=1",
]  # fmt: skip


def time_to_first_step(cache: pathlib.Path, run_dir: pathlib.Path) -> float:
    """Seconds from the process start to its `step 1/` progress line."""
    command = [
        sys.executable, "-m", "paxtrain", "fit", str(ROOT / "configs" / "char_rnn.yaml"),
        *OVERRIDES, f"trainer.compile_cache={cache}", f"run_dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    elapsed = None
    for line in process.stdout:
        if elapsed is None and line.startswith("step 1/"):
            elapsed = time.perf_counter() - started
    if process.wait() != 0 or elapsed is None:
        raise RuntimeError(f"{' '.join(command)} failed (exit code {process.returncode})")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="cold/warm pairs, interleaved")
    args = parser.parse_args()
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            cache = pathlib.Path(tmp) / f"cache{i}"  # empty: cold
            cold.append(time_to_first_step(cache, pathlib.Path(tmp) / f"cold{i}"))
            warm.append(time_to_first_step(cache, pathlib.Path(tmp) / f"warm{i}"))
            print(f"pair {i}: cold {cold[-1]:.1f} s, warm {warm[-1]:.1f} s", flush=True)
    ratio = statistics.median(w / c for c, w in zip(cold, warm))
    body = f"""\
Time from `python -m paxtrain fit configs/char_rnn.yaml` starting to its first step (imports,
data, model, compile, step 1), JAX's persistent compilation cache empty (cold) or filled by the
run before (warm); {args.pairs} pairs, each pair run back to back. Command:
`python benchmarks/compile_cache.py --pairs {args.pairs}`. {machine_line()}; the machine was
shared with other work.

| | median | runs |
|---|---|---|
| cold cache | {statistics.median(cold):.1f} s | {", ".join(f"{t:.1f}" for t in cold)} |
| warm cache | {statistics.median(warm):.1f} s | {", ".join(f"{t:.1f}" for t in warm)} |
| warm / cold (median of pairs) | **{ratio:.2f}x** | goal <= 0.5x |
"""
    write_section(section_title("Compile cache"), body)
    print(body)


if __name__ == "__main__":
    main()
