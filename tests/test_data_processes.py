"""Two joined processes (2 CPU devices each) train through TokenFile and GrainSource as one
process does: each process reads its own rows (`rows=`), the losses agree. Slow: four runs."""

import sys

import numpy as np
import pytest
from cli_support import ROOT
from test_data_grain import npy_overrides, write_npy_images
from test_parallel import run_two_processes
from test_parallel_trainer import run, series

from paxtrain.data import tokenize_files
from paxtrain.data.text import stdlib_corpus
from paxtrain.train.logger import read_metrics

pytest.importorskip("grain")
pytestmark = pytest.mark.slow

SHORT = ["trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=2", "callbacks=[]"]
SHORT += ["optimizer.learning_rate.warmup_steps=0", "trainer.plot=false", "trainer.progress=log"]


def token_lm(tmp_path) -> list[str]:
    text = tmp_path / "text.txt"
    text.write_text(stdlib_corpus(max_chars=20_000))
    tokenize_files([text], tmp_path / "tokens.bin", vocab="chars")
    return [
        "configs/transformer_lm.yaml", "data._target_=paxtrain.data.TokenFile",
        f"data.path={tmp_path / 'tokens.bin'}", "data.seq_len=16", "data.batch_size=8",
        "data.eval_batches=2", "model.num_layers=1", "model.model_dim=16", "model.num_heads=2",
    ]  # fmt: skip


def grain_images(tmp_path) -> list[str]:
    write_npy_images(tmp_path)
    # Eval batches of 6: the last one (2 examples) does not split over 4 devices.
    return ["configs/image_classifier.yaml", *npy_overrides(tmp_path), "data.batch_size=8"] + [
        "data.eval_batch_size=6",
        "model.channels=[4]",
    ]


@pytest.mark.parametrize("recipe", [token_lm, grain_images], ids=["TokenFile", "GrainSource"])
def test_two_processes_train_like_one(recipe, tmp_path):
    config, *overrides = recipe(tmp_path)
    fit = ["-m", "paxtrain", "fit", config, *overrides, *SHORT]
    run([*fit, f"run_dir={tmp_path / 'one'}"], 1)
    command = [sys.executable, *fit, f"run_dir={tmp_path / 'two'}", "mesh.data=2", "mesh.fsdp=2"]
    outputs = run_two_processes(command, PYTHONPATH=str(ROOT))
    assert "paxtrain: finished at step 4" in outputs[0]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for key in ("train/loss", "eval/loss"):
        assert len(series(two, key)) == len(series(one, key)) > 0
        np.testing.assert_allclose(series(two, key), series(one, key), rtol=2e-5)
