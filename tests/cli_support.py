"""Running `paxtrain` in a subprocess with a tiny char_rnn, for the end-to-end tests."""

import json
import os
import pathlib
import subprocess
import sys

from conftest import cpu_env

ROOT = pathlib.Path(__file__).parents[1]
CHAR_RNN = str(ROOT / "configs" / "char_rnn.yaml")

# A char_rnn that trains in seconds.
TINY_CHAR_RNN = [
    "trainer.progress=log",
    "data.seq_len=16",
    "data.batch_size=4",
    "data.eval_batches=2",
    "data.max_chars=20000",
    "model.embed_dim=8",
    "model.hidden_dim=16",
    "optimizer.learning_rate.warmup_steps=2",
]


def run_paxtrain(
    *args: str, cwd: pathlib.Path = ROOT, pythonpath: tuple = ()
) -> subprocess.CompletedProcess:
    """`python -m paxtrain ARGS` on the CPU, with the project (and `pythonpath`) importable."""
    path = os.pathsep.join([str(ROOT), *map(str, pythonpath)])
    return subprocess.run(
        [sys.executable, "-m", "paxtrain", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def fit_losses(run_dir: pathlib.Path, devices: int, *fit_args: str) -> list[float]:
    """`paxtrain fit FIT_ARGS run_dir=RUN_DIR` on `devices` virtual CPU devices (a subprocess:
    the device count is fixed when JAX starts); returns the logged training losses, step by
    step. Pass `trainer.log_every=1` to get every step's."""
    done = subprocess.run(
        [sys.executable, "-m", "paxtrain", "fit", *fit_args, f"run_dir={run_dir}"],
        env=cpu_env(devices, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["train/loss"] for line in lines if "train/loss" in line]
