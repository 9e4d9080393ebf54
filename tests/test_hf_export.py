"""`paxtrain export --format hf`: what it writes reads back bit for bit, is the fixtures' own
tensors for an imported model, and a run's export is its checkpoint's parameters."""

import importlib
import json
import pathlib

import numpy as np
import pytest

import paxtrain as pax
from paxtrain.checkpoint.finetune import load_parameters
from paxtrain.checkpoint.store import flatten_state
from paxtrain.cli.app import main
from paxtrain.errors import CheckpointError
from paxtrain.hf.config import read_config
from paxtrain.hf.export import export_hf, hf_tensors
from paxtrain.hf.load import load_hf_parameters
from paxtrain.hf.safetensors import checkpoint_tensors, open_tensor
from paxtrain.recipes.llama_lm import LlamaLM
from paxtrain.recipes.transformer_lm import TransformerLM

ROOT = pathlib.Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "hf"


def build(directory, **options):
    architecture, settings = read_config(directory)
    module, name = architecture.recipe.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**settings, **options)


def parameters(model):
    return {
        path: np.asarray(x)
        for path, x in flatten_state(pax.select_parameters(pax.unfreeze_parameters(model))).items()
    }


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for path in a:
        assert a[path].dtype == b[path].dtype and a[path].shape == b[path].shape, path
        assert a[path].tobytes() == b[path].tobytes(), path


MODELS = {
    "llama scan": lambda: LlamaLM(
        vocab_size=96, num_layers=3, num_heads=4, num_kv_heads=1, model_dim=32, scan_layers=True,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "llama tied": lambda: LlamaLM(vocab_size=96, num_heads=2, num_kv_heads=2, model_dim=16,
                                  tie_embeddings=True, norm_eps=1e-6),
    "gpt2": lambda: TransformerLM(96, seq_len=24, num_heads=2, model_dim=16, mlp_ratio=3,
                                  tie_embeddings=True, norm_eps=1e-6),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("max_shard_bytes", [None, 4096], ids=["one file", "sharded"])
def test_export_then_import_is_bitwise(name, max_shard_bytes, tmp_path):
    pax.seed_rng_key(7)
    model = MODELS[name]()
    files = export_hf(model, tmp_path, {"max_position_embeddings": 24}, max_shard_bytes)
    assert ("model.safetensors.index.json" in files) == (max_shard_bytes is not None)
    pax.seed_rng_key(8)  # another initialization, which the import replaces
    fresh = build(tmp_path, scan_layers="scan" in name)
    assert_bitwise_equal(parameters(load_hf_parameters(fresh, tmp_path)), parameters(model))


@pytest.mark.parametrize("name", ["llama", "llama_tied", "gpt2"])
def test_an_imported_fixture_exports_as_its_own_tensors(name):
    """The export's layouts are the import's inverses: the fixture's tensors, bit for bit
    (GPT-2's fused q/k/v included)."""
    source = FIXTURES / name
    model = load_hf_parameters(build(source), source)
    want = {n: np.array(open_tensor(e)) for n, e in checkpoint_tensors(source).items()}
    assert_bitwise_equal(hf_tensors(model), want)


def test_an_untied_transformer_lm_is_not_gpt2(tmp_path):
    model = TransformerLM(96, seq_len=8, num_heads=2, model_dim=16)
    with pytest.raises(CheckpointError, match="model.tie_embeddings=true"):
        export_hf(model, tmp_path)


def test_the_tokenizer_is_copied(tmp_path):
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text('{"model": {}}')
    model = MODELS["llama tied"]()
    files = export_hf(model, tmp_path / "out", tokenizer=tokenizer)
    assert files[-1] == "tokenizer.json"
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == tokenizer.read_bytes()


FIT = [
    "fit", "llama_lm", f"init_from=hf:{FIXTURES / 'llama'}", "trainer.max_steps=4",
    "trainer.eval_every=2", "trainer.log_every=2", "trainer.progress=off", "trainer.plot=false",
    "trainer.checkpoint.every_steps=2", "optimizer.learning_rate.warmup_steps=1", "callbacks=[]",
    "data.seq_len=16", "data.batch_size=4", "data.eval_batches=1", "data.max_chars=20000",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A llama_lm run fine-tuned for 4 steps from the Llama fixture, checkpoints at 2 and 4."""
    run_dir = tmp_path_factory.mktemp("runs") / "ft"
    assert main([*FIT, f"run_dir={run_dir}"]) == 0
    return run_dir


def test_a_runs_export_is_its_checkpoint(run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out), "--step", "2"]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {out}: config.json, model.safetensors\n")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["bos_token_id"] == 1
    assert config["max_position_embeddings"] == 2048  # the base checkpoint's
    saved = parameters(load_parameters(build(FIXTURES / "llama"), run / "checkpoints" / "2"))
    assert_bitwise_equal(parameters(load_hf_parameters(build(out), out)), saved)
    base = parameters(load_hf_parameters(build(FIXTURES / "llama"), FIXTURES / "llama"))
    assert any(saved[p].tobytes() != base[p].tobytes() for p in base)  # it did train


def test_export_never_writes_over_files_without_force(run, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["export", str(run), "--format", "hf", "--out", str(out)]
    assert main(argv) == 2
    assert "is not empty" in capsys.readouterr().err and list(out.iterdir()) == [out / "notes.txt"]
    assert main([*argv, "--force", "--max-shard-size", "30KB"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in names and "notes.txt" in names
    saved = parameters(load_parameters(build(FIXTURES / "llama"), run))  # the newest: step 4
    assert_bitwise_equal(parameters(load_hf_parameters(build(out), out)), saved)


def test_a_bpe_runs_export_carries_its_tokenizer(tmp_path):
    text, tokenizer = tmp_path / "text.txt", tmp_path / "tokenizer.json"
    text.write_text((ROOT / "README.md").read_text(encoding="utf-8")[:20000])
    assert main(["data", "tokenizer", "train", str(text), "--vocab-size", "300",
                 "--out", str(tokenizer)]) == 0  # fmt: skip
    assert main(["data", "tokenize", str(text), str(tmp_path / "t.bin"),
                 "--tokenizer", str(tokenizer)]) == 0  # fmt: skip
    run_dir, out = tmp_path / "run", tmp_path / "hf"
    fit = [
        "fit", "llama_lm", "data._target_=paxtrain.data.TokenFile", f"data.path={tmp_path}/t.bin",
        f"data.tokenizer={tokenizer}", "data.seq_len=16", "data.batch_size=4",
        "data.eval_batches=1", "model.model_dim=16", "trainer.max_steps=2", "trainer.eval_every=2",
        "trainer.progress=off", "trainer.plot=false", "optimizer.learning_rate.warmup_steps=1",
        "callbacks=[]", f"run_dir={run_dir}",
    ]  # fmt: skip
    assert main(fit) == 0
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert (out / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (300, 0, 1)
    assert config["max_position_embeddings"] == 16  # the run's data.seq_len


def test_export_of_a_step_the_run_has_not_is_refused(run, tmp_path, capsys):
    argv = ["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf"), "--step", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no checkpoint of step 3; it has [2, 4]" in err
    assert not (tmp_path / "hf").exists()


def test_a_lora_run_exports_merged(tmp_path, capsys):
    """A LoRA fine-tune of the Llama fixture: its adapters have no place in the checkpoint
    without --merge; with it, the export is the merged model's parameters, bit for bit."""
    from paxtrain.cli.commands import restore_run
    from paxtrain.nn.lora import merge_lora

    run_dir, out = tmp_path / "lora", tmp_path / "hf"
    lora = ["finetune.lora.rank=4", "finetune.lora.paths=[query_proj$,value_proj$]"]
    assert main([*FIT, *lora, f"run_dir={run_dir}"]) == 0
    argv = ["export", str(run_dir), "--format", "hf", "--out", str(out)]
    assert main(argv) == 2
    assert "`blocks.layers.0.attention.query_proj.adapter" in capsys.readouterr().err
    assert main([*argv, "--merge"]) == 0
    merged = merge_lora(restore_run(run_dir).state.model)
    assert_bitwise_equal(parameters(load_hf_parameters(build(out), out)), parameters(merged))
