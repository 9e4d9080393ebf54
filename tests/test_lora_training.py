"""LoRA fine-tuning end to end (`finetune.lora`): through `paxtrain fit` in this process, from a
llama_lm run at the recipe's size (2 layers, GQA, 128 dims), adapters of rank 8 on the query and
value projections."""

import pathlib
import re
import shutil

import numpy as np
import pytest
from conftest import read_jsonl

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.checkpoint.finetune import load_parameters
from paxtrain.checkpoint.frozen_base import frozen_paths
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.cli.app import main
from paxtrain.cli.build import build_trainer
from paxtrain.cli.fit import fit_from_config
from paxtrain.config.composition import compose

LLAMA = str(pathlib.Path(__file__).parents[1] / "configs" / "llama_lm.yaml")
TINY = [
    "trainer.log_every=1",
    "trainer.eval_every=2",
    "trainer.progress=off",
    "trainer.plot=false",
    "trainer.checkpoint.async_save=false",
    "trainer.checkpoint.every_steps=1",
    "data.seq_len=16",
    "data.batch_size=4",
    "data.eval_batches=1",
    "data.max_chars=20000",
    "optimizer.learning_rate.warmup_steps=1",
    "optimizer.horizon=4",
    "callbacks=[]",
]
LORA = ["finetune.lora.rank=8", "finetune.lora.paths=[query_proj$,value_proj$]"]


def fit(run_dir, *overrides):
    """`paxtrain fit llama_lm` in this process; the trainer after training."""
    return fit_from_config(compose(LLAMA, [*TINY, f"run_dir={run_dir}", *overrides]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The base run (2 steps, checkpoints at 1 and 2), a LoRA run of 4 steps from it, and one
    stopped after 2 steps and resumed to 4."""
    root = tmp_path_factory.mktemp("lora")
    base = root / "base"
    fit(base, "trainer.max_steps=2")
    lora = fit(root / "lora", "trainer.max_steps=4", f"init_from={base}", *LORA)
    fit(root / "resumed", "trainer.max_steps=2", f"init_from={base}", *LORA)
    resumed = fit(root / "resumed", "trainer.max_steps=4", f"init_from={base}", *LORA)
    return root, lora, resumed


def test_the_base_weights_are_bitwise_unchanged_after_training(runs):
    root, lora, _ = runs
    model = lora.state.model
    frozen = {f"model.{p}": x for p, x in flatten_state(model).items() if p in frozen_paths(model)}
    assert len(frozen) == 21  # every parameter but the adapters: LoRA freezes the whole model
    manager = CheckpointManager(root / "base" / "checkpoints", read_only=True)
    saved = manager.read_arrays(frozen, step=2)
    manager.close()
    for path, array in frozen.items():
        np.testing.assert_array_equal(array, saved[path], err_msg=path)
    b = model.blocks.layers[0].attention.query_proj.adapter.lora_b
    assert float(np.abs(b).max()) > 0  # the adapters did train


def test_the_first_step_loss_is_the_base_models(runs, tmp_path):
    root, _, _ = runs
    _, build, data, _ = build_trainer(compose(LLAMA, TINY), tmp_path)
    pax.seed_rng_key(0)
    base = load_parameters(build(), root / "base")
    expected, _ = base.loss(data.train_batch(0))
    first = read_jsonl(root / "lora")[0]
    assert first["step"] == 1
    np.testing.assert_allclose(first["train/loss"], float(expected), rtol=1e-6)


def test_merged_and_unmerged_logits_match(runs):
    _, lora, _ = runs
    ids = lora.data.train_batch(0)["inputs"]
    model = lora.state.model.eval()
    np.testing.assert_allclose(nn.merge_lora(model)(ids), model(ids), atol=1e-5, rtol=1e-5)


def test_a_resumed_lora_run_is_bitwise_the_uninterrupted_one(runs):
    _, lora, resumed = runs
    assert resumed.resumed_from == 2
    straight, again = flatten_state(lora.state), flatten_state(resumed.state)
    assert straight.keys() == again.keys()
    for path in straight:
        np.testing.assert_array_equal(straight[path], again[path], err_msg=path)


def test_checkpoints_hold_the_adapters_in_under_5_percent_of_a_full_ones_bytes(runs):
    root, lora, _ = runs

    def size(step_dir):
        return sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file())

    adapters, full = (
        size(root / "lora" / "checkpoints" / "4"),
        size(root / "base" / "checkpoints" / "2"),
    )
    assert adapters < 0.05 * full, (adapters, full)
    manager = CheckpointManager(root / "lora" / "checkpoints", read_only=True)
    saved, meta = manager.saved_arrays(4), manager.meta(4)
    manager.close()
    assert not set(saved) & {f"model.{p}" for p in frozen_paths(lora.state.model)}
    assert meta["frozen_base"]["source"] == str(root / "base")
    assert len(meta["frozen_base"]["fingerprints"]) == 21


def test_a_resume_on_another_base_is_refused(runs, tmp_path, capsys):
    root, _, _ = runs
    run = tmp_path / "moved"
    shutil.copytree(root / "resumed", run)
    other = root / "base" / "checkpoints" / "1"  # the base one step earlier: other weights
    argv = [
        "fit",
        LLAMA,
        *TINY,
        *LORA,
        f"run_dir={run}",
        "trainer.max_steps=6",
        f"init_from={other}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was trained on other frozen base weights than the ones loaded now" in err
    assert f"the base came from '{root / 'base'}'" in err


def test_a_lora_run_is_no_init_from_source(runs, tmp_path, capsys):
    root, _, _ = runs
    argv = ["fit", LLAMA, *TINY, f"run_dir={tmp_path / 'x'}", f"init_from={root / 'lora'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"init_from='{root / 'lora'}' is a LoRA run" in err and "--merge" in err


def test_eval_and_sample_read_a_lora_run_with_its_base(runs, capsys):
    root, lora, _ = runs
    assert main(["eval", str(root / "lora")]) == 0
    printed = re.search(r"eval/loss=([\d.]+)", capsys.readouterr().out)
    assert printed is not None  # the run's own last evaluation, on the base `init_from` loads
    np.testing.assert_allclose(float(printed[1]), lora.eval_history[-1][1]["loss"], rtol=1e-5)
    argv = ["sample", str(root / "lora"), "--prompt", "def ", "--max-new-tokens", "5"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("def ")
