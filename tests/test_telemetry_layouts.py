"""`paxtrain summary` and `Trainer.summary` for every packaged recipe in every layout on 8
virtual CPU devices: the bytes per device the summary reads from the shardings (nothing
allocated) are those device 0 holds once the state is built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import cpu_env

from tests.test_parallel import SCRIPTS, last_json_line

TENSOR_UNUSED = 'LayoutError: The mesh\'s "tensor" axis has size'


def summaries(recipe: str) -> dict:
    done = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "summary_layouts.py"), recipe],
        env=cpu_env(8), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return last_json_line(done.stdout)[recipe]


# Five layouts of a recipe, each summarized and built on 8 devices: the slow step's. The default
# run checks the summary on 8 devices through the command below.
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["transformer_lm", "char_rnn", "image_classifier", "llama_lm"])
def test_summary_in_every_layout_matches_the_allocated_state(recipe):
    results = summaries(recipe)
    ran = {name: r for name, r in results.items() if "error" not in r}
    for name, result in results.items():
        if "error" in result:  # a model no tensor-parallel rule splits: refused, with the fix
            assert name in ("tensor", "data_fsdp_tensor") and recipe in (
                "char_rnn",
                "image_classifier",
            )
            assert result["error"].startswith(TENSOR_UNUSED)
    assert {"data", "fsdp", "pmap"} <= ran.keys()
    assert len({r["parameters"] for r in ran.values()}) == 1
    for name, result in ran.items():
        for part, allocated in result.get("allocated", {}).items():
            assert result["state_bytes"][part] == allocated, (name, part)
        assert result["fits"] and "memory: fits" in result["text"]
        assert result["step_bytes"]["temporaries"] > 0
    # Replicated (data, pmap): every device holds all of it; FSDP: less.
    full = 4 * ran["data"]["parameters"]
    assert ran["data"]["state_bytes"]["parameters"] == ran["pmap"]["state_bytes"]["parameters"]
    assert ran["data"]["state_bytes"]["parameters"] == full
    assert ran["fsdp"]["state_bytes"]["parameters"] < full


def test_the_summary_command_on_eight_devices():
    done = subprocess.run(
        [sys.executable, "-m", "paxtrain", "summary", "transformer_lm", "mesh.data=2",
         "mesh.fsdp=4", "data.max_chars=20000", "data.seq_len=16", "data.batch_size=8",
         "model.model_dim=64", "model.num_heads=4"],
        env=cpu_env(8), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "TransformerLM: 113,762 parameters" in out
    assert "layout: jit, mesh data=2 fsdp=4 tensor=1 (8 devices)" in out
    assert "per token" in out and "(formula)" in out
    assert "memory: fits:" in out and "(host memory / 8 devices)" in out
