"""The README's "A modern language model" block runs as written, at tiny sizes: train a tokenizer
on local text, tokenize it with document boundaries, fit llama_lm on the token file, sample from
the run with the cache. Each command is the README's own line; `paxtrain` is a shell function
that appends the tiny sizes (argparse and Hydra both take the last value given)."""

import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from paxtrain.cli.commands import sample_run

pytest.importorskip("tokenizers")

from paxtrain.data.bpe import BpeVocab  # noqa: E402

ROOT = pathlib.Path(__file__).parents[1]
TINY_FIT = (
    "trainer.max_steps=4 trainer.log_every=2 trainer.eval_every=4 trainer.progress=off "
    "trainer.plot=false trainer.checkpoint.async_save=false data.seq_len=16 data.batch_size=4 "
    "data.eval_batches=1 model.model_dim=16 model.num_heads=2 model.num_kv_heads=1 "
    "optimizer.learning_rate.warmup_steps=1 callbacks.0.num_chars=8"
)
# Appended to each `paxtrain` command of the block, by its first words.
TINY = f"""
paxtrain() {{
  case "$1 $2" in
    "data tokenizer") set -- "$@" --vocab-size 300 ;;
    "fit "*) set -- "$@" {TINY_FIT} ;;
    "sample "*) set -- "$@" --max-new-tokens 12 ;;
  esac
  "{sys.executable}" -m paxtrain "$@"
}}
set -euo pipefail
"""


def language_model_block() -> str:
    section = (ROOT / "README.md").read_text().split("\n## A modern language model")[1]
    return re.search(r"^```bash\n(.*?)^```", section, flags=re.M | re.S).group(1)


@pytest.mark.slow
def test_the_readme_language_model_path_runs_as_written_at_tiny_sizes(tmp_path, monkeypatch):
    block = language_model_block()
    commands = [line.split()[:3] for line in block.splitlines() if line.startswith("paxtrain")]
    assert commands == [
        ["paxtrain", "data", "tokenizer"],
        ["paxtrain", "data", "tokenize"],
        ["paxtrain", "fit", "llama_lm"],
        ["paxtrain", "sample", "runs/llama"],
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env['PATH']}"  # its `python`
    done = subprocess.run(
        ["bash", "-c", TINY + block], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    assert len(BpeVocab(tmp_path / "runs/bpe/tokenizer.json")) == 300
    sidecar = json.loads((tmp_path / "runs/bpe/stdlib.bin.json").read_text())
    ids = np.fromfile(tmp_path / "runs/bpe/stdlib.bin", dtype=sidecar["dtype"])
    files = list(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    # One document per file: an <|eos|> (id 1) after each, the last id of the file too.
    assert sidecar["tokenizer"]["eos_id"] == 1 and (ids == 1).sum() == len(files) and ids[-1] == 1
    assert sidecar["num_bytes"] == sum(path.stat().st_size for path in files)
    metrics = [json.loads(line) for line in (tmp_path / "runs/llama/metrics.jsonl").open()]
    assert any("eval/bits_per_byte" in m and m["step"] == 4 for m in metrics)
    # The sample command's text is the sampler's, with the block's settings.
    sample = next(line.split() for line in block.splitlines() if line.startswith("paxtrain sample"))
    options = {"max_new_tokens": 12, "temperature": float(sample[sample.index("--temperature") + 1]),
               "top_p": float(sample[sample.index("--top-p") + 1])}  # fmt: skip
    monkeypatch.chdir(tmp_path)
    text = sample_run("runs/llama", "def ", options)
    assert len(text) > 0 and done.stdout.endswith(f"def {text}\n"), done.stdout[-500:]
