"""`init_from=hf:DIR`: the committed Hugging Face fixtures (`tests/fixtures/make_hf_fixtures.py`)
import into the recipes' models and give `transformers`' own float32 logits, on one device and
sharded over 8; the conversions that go silently wrong elsewhere (a RoPE permutation, a
transposed matrix, a head count) are caught."""

import importlib
import json
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from cli_support import fit_losses
from conftest import cpu_env

import paxtrain as pax
from paxtrain.checkpoint.finetune import load_parameters, replace_parameters
from paxtrain.checkpoint.store import flatten_state
from paxtrain.errors import CheckpointError
from paxtrain.hf.config import read_config
from paxtrain.hf.export import export_hf, hf_tensors
from paxtrain.hf.load import load_hf_parameters
from paxtrain.hf.safetensors import checkpoint_tensors, open_tensor, write_checkpoint
from paxtrain.recipes.llama_lm import LlamaLM

ROOT = pathlib.Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "hf"
PROMPT = np.load(FIXTURES / "prompt.npy")


def build(directory, **options):
    """The recipe's model for a checkpoint's config.json (`options`: scan_layers...)."""
    architecture, settings = read_config(directory)
    module, name = architecture.recipe.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**settings, **options)


def logits(model):
    return np.asarray(model.eval()(jnp.asarray(PROMPT, jnp.int32)))


def rewritten(directory, tmp_path, change):
    """A copy of a fixture whose tensors `change(dict)` edited (in place)."""
    tensors = {name: np.array(open_tensor(e)) for name, e in checkpoint_tensors(directory).items()}
    change(tensors)
    out = tmp_path / directory.name
    out.mkdir()
    shutil.copy(directory / "config.json", out)
    write_checkpoint(out, tensors)
    return out


@pytest.mark.parametrize("name", ["llama", "llama_tied", "gpt2"])
@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_imported_logits_match_transformers(name, scan_layers):
    model = load_hf_parameters(build(FIXTURES / name, scan_layers=scan_layers), FIXTURES / name)
    np.testing.assert_allclose(logits(model), np.load(FIXTURES / name / "logits.npy"), atol=1e-5)


def test_init_from_hf_is_load_parameters_road():
    model = load_parameters(build(FIXTURES / "gpt2"), f"hf:{FIXTURES / 'gpt2'}")
    np.testing.assert_allclose(logits(model), np.load(FIXTURES / "gpt2" / "logits.npy"), atol=1e-5)


def test_the_llama3_rope_scaling_matters():
    """The same weights in a model without the fixture's `rope_scaling` give other logits (the
    check above would catch a scaling read wrongly), and loading into it is refused."""
    settings = read_config(FIXTURES / "llama")[1]
    loaded = load_hf_parameters(build(FIXTURES / "llama"), FIXTURES / "llama")
    plain = type(loaded)(**{**settings, "rope_scaling": None})
    unscaled = replace_parameters(plain, flatten_state(pax.select_parameters(loaded)))
    assert np.abs(logits(unscaled) - np.load(FIXTURES / "llama" / "logits.npy")).max() > 1e-3
    with pytest.raises(CheckpointError, match="the model has rope_scaling=None but"):
        load_hf_parameters(plain, FIXTURES / "llama")


def _interleave(weight, heads):
    """Meta's layout of a q/k projection [heads * d, in]: each head's rotation pairs interleaved,
    (x0, x1), (x2, x3)..., instead of Hugging Face's halves; what a conversion that forgot the
    permutation would hand over."""
    out, inputs = weight.shape
    d = out // heads
    return weight.reshape(heads, 2, d // 2, inputs).transpose(0, 2, 1, 3).reshape(out, inputs)


def test_a_wrong_rope_layout_changes_the_logits(tmp_path):
    source = FIXTURES / "llama"
    config = json.loads((source / "config.json").read_text())

    def unpermute(tensors):
        for layer in range(config["num_hidden_layers"]):
            for proj, heads in (("q", "num_attention_heads"), ("k", "num_key_value_heads")):
                name = f"model.layers.{layer}.self_attn.{proj}_proj.weight"
                tensors[name] = _interleave(tensors[name], config[heads])

    wrong = rewritten(source, tmp_path, unpermute)
    model = load_hf_parameters(build(wrong), wrong)
    assert np.abs(logits(model) - np.load(source / "logits.npy")).max() > 1e-2


def test_a_transposed_square_matrix_changes_the_logits(tmp_path):
    source = FIXTURES / "llama"
    name = "model.layers.0.self_attn.o_proj.weight"  # [32, 32]: no shape can tell

    def transpose(tensors):
        tensors[name] = np.ascontiguousarray(tensors[name].T)

    wrong = rewritten(source, tmp_path, transpose)
    model = load_hf_parameters(build(wrong), wrong)
    assert np.abs(logits(model) - np.load(source / "logits.npy")).max() > 1e-2


def test_a_transposed_matrix_is_one_message_with_both_shapes(tmp_path):
    name = "model.layers.1.self_attn.k_proj.weight"  # [16, 32]

    def transpose(tensors):
        tensors[name] = np.ascontiguousarray(tensors[name].T)

    wrong = rewritten(FIXTURES / "llama", tmp_path, transpose)
    with pytest.raises(CheckpointError) as error:
        load_hf_parameters(build(FIXTURES / "llama"), wrong)
    message = str(error.value)
    assert f"`{name}` has shape (32, 16)" in message
    assert "`blocks.layers.1.attention.key_proj.weight` (32, 16) needs (16, 32)" in message


def test_a_missing_tensor_is_named(tmp_path):
    wrong = rewritten(FIXTURES / "gpt2", tmp_path, lambda t: t.pop("transformer.h.1.ln_2.bias"))
    with pytest.raises(CheckpointError, match=r"has no tensor `transformer\.h\.1\.ln_2\.bias`"):
        load_hf_parameters(build(FIXTURES / "gpt2"), wrong)


def test_an_extra_tensor_is_named(tmp_path):
    def add_bias(tensors):
        tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)

    wrong = rewritten(FIXTURES / "llama", tmp_path, add_bias)
    with pytest.raises(CheckpointError, match=r"no place for.*q_proj\.bias` \(32,\) \(1 in all\)"):
        load_hf_parameters(build(FIXTURES / "llama"), wrong)


def test_a_head_count_no_shape_shows_is_named():
    """2 heads of 16 have the projections of 4 heads of 8: only the settings tell them apart."""
    settings = {**read_config(FIXTURES / "llama_tied")[1], "num_heads": 2, "num_kv_heads": 2}
    model = type(build(FIXTURES / "llama_tied"))(**settings)
    with pytest.raises(CheckpointError, match="the model has num_heads=2 but .* gives 4"):
        load_hf_parameters(model, FIXTURES / "llama_tied")


def test_another_architecture_is_named():
    with pytest.raises(CheckpointError, match="holds a GPT2LMHeadModel.*transformer_lm"):
        load_hf_parameters(build(FIXTURES / "llama"), FIXTURES / "gpt2")


def test_a_sharded_checkpoint_reads_like_one_file(tmp_path):
    source = FIXTURES / "llama"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(source / "config.json", sharded)
    tensors = {n: np.array(open_tensor(e)) for n, e in checkpoint_tensors(source).items()}
    files = write_checkpoint(sharded, tensors, max_shard_bytes=20_000)
    assert len(files) > 3 and files[-1] == "model.safetensors.index.json"
    model = load_hf_parameters(build(sharded), sharded)
    np.testing.assert_array_equal(logits(model), logits(load_hf_parameters(build(source), source)))


def test_a_bfloat16_checkpoint_reads_into_float32_parameters(tmp_path):
    def to_bfloat16(tensors):
        tensors.update({name: t.astype(ml_dtypes.bfloat16) for name, t in tensors.items()})

    halved = rewritten(FIXTURES / "gpt2", tmp_path, to_bfloat16)
    model = load_hf_parameters(build(halved), halved)
    got = hf_tensors(model)
    for name, entry in checkpoint_tensors(halved).items():
        assert entry.dtype == ml_dtypes.bfloat16 and got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], np.asarray(open_tensor(entry), np.float32))


def test_fsdp_over_8_devices_holds_only_each_share(tmp_path):
    """With every leaf split 8 ways, the loader makes each device's shards and nothing else:
    the bytes it makes are the devices' final shares (peak / share = 1.0 <= 1.2), no array it
    makes is larger than one shard, and the sharded model gives transformers' logits. Counted
    bytes: CPU devices have no `memory_stats()`."""
    env = cpu_env(8, PYTHONPATH=str(ROOT))
    script = ROOT / "tests" / "parallel_scripts" / "hf_fsdp_import.py"
    done = subprocess.run(
        [sys.executable, str(script), str(FIXTURES / "llama")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    shares = report["share_bytes"]
    assert report["devices"] == 8 and sum(shares) == report["whole_bytes"]
    assert max(shares) * 8 <= report["whole_bytes"] * 1.2  # each device holds about 1/8
    assert report["made_bytes"] <= 1.2 * sum(shares)
    assert report["largest_made"] * 8 <= report["largest_param"]  # no whole tensor made
    assert report["max_logit_difference"] <= 1e-5


# llama_lm for 3 steps, each step's loss logged, nothing else written.
TINY_LLAMA = [
    "llama_lm", "trainer.max_steps=3", "trainer.log_every=1", "trainer.eval_every=null",
    "trainer.progress=off", "trainer.plot=false", "trainer.checkpoint.enabled=false",
    "data.seq_len=16", "data.batch_size=8", "data.max_chars=20000",
    "optimizer.learning_rate.warmup_steps=1", "callbacks=[]",
]  # fmt: skip


@pytest.mark.slow
def test_a_fine_tune_from_hf_under_fsdp_8_trains_like_one_device(tmp_path):
    """The road through `paxtrain fit`: a checkpoint with projections large enough for the FSDP
    rule to split (65536 elements), fine-tuned on 1 device and on 8 with `mesh.fsdp=8`."""
    pax.seed_rng_key(0)
    model = LlamaLM(vocab_size=128, model_dim=256, num_heads=4, num_kv_heads=2, num_layers=2)
    export_hf(model, tmp_path / "hf", {"max_position_embeddings": 64})
    source = f"init_from=hf:{tmp_path / 'hf'}"
    one = fit_losses(tmp_path / "one", 1, *TINY_LLAMA, source)
    eight = fit_losses(tmp_path / "eight", 8, *TINY_LLAMA, source, "mesh.data=1", "mesh.fsdp=8")
    assert len(one) == 3
    np.testing.assert_allclose(eight, one, rtol=2e-5)
