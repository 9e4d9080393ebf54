"""Bad input, as a table: every row ends with exit code 2 and one `paxtrain:` line that names
the key or file and the fix, no traceback, and no run directory left behind.

The rows call the command line's `main` in this process: each fails before anything is
compiled, so the whole table takes seconds."""

import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_support import CHAR_RNN, ROOT, TINY_CHAR_RNN

from paxtrain.cli.app import main
from paxtrain.config.composition import compose

IMAGES = str(ROOT / "configs" / "image_classifier.yaml")
FIXTURES = ROOT / "tests" / "fixtures" / "hf"
TINY = [*TINY_CHAR_RNN, "callbacks=[]", "trainer.max_steps=4", "trainer.eval_every=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Data files and a checkpoint the rows point at, outside the per-row directory."""
    from paxtrain.checkpoint.store import CheckpointManager

    root = tmp_path_factory.mktemp("inputs")
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (root / "short.txt").write_text("def f(x):\n    return x\n" * 2)
    (root / "medium.txt").write_text("def f(x):\n    return x\n" * 30)
    (root / "a_directory").mkdir()
    (root / "bad.yaml").write_text("name: x\ntrainer: {max_steps: 5\n  oops: [\n")
    # A checkpoint of another model: its `model.embed.weight` has another shape than char_rnn's.
    manager = CheckpointManager(root / "other_model" / "checkpoints", async_save=False)
    manager.save(OtherState(model={"embed": {"weight": np.zeros((5, 8))}}, step=0))
    manager.close()  # the rows compare the files before and after
    write_text_inputs(root)
    write_token_files(root)
    write_image_files(root)
    write_run_dirs(root)
    write_hf_checkpoints(root)
    write_table_inputs(root)
    write_finished_run(root)
    return root


def write_text_inputs(root):
    """Text for `paxtrain data tokenize`: non-ASCII, not UTF-8 after its first KiB, a token file."""
    (root / "unicode.txt").write_text("Grüße aus Köln, naïve café\n" * 40, encoding="utf-8")
    (root / "latin1.txt").write_bytes(b"x = 1\n" * 500 + "café\n".encode("latin-1"))
    np.arange(10, dtype=np.uint16).tofile(root / "existing.bin")


def write_table_inputs(root):
    """JSONL tables for `paxtrain data tokenize`: a good one, a number as text, a broken line."""
    (root / "docs.jsonl").write_text('{"text": "def f(): pass", "id": 1}\n')
    (root / "numbers.jsonl").write_text('{"text": "x = 1"}\n{"text": 7}\n')
    (root / "broken.jsonl").write_text('{"text": "x = 1"}\n{"text": y}\n')


def write_token_files(root):
    """A transformer_lm config reading a token file, and token files with bad sidecars."""
    from omegaconf import OmegaConf

    from paxtrain.data import tokenize_files

    config = OmegaConf.load(ROOT / "configs" / "transformer_lm.yaml")
    config.data = {"_target_": "paxtrain.data.TokenFile", "path": "???", "seq_len": 16,
                   "batch_size": 4, "eval_batches": 2}  # fmt: skip
    config.model.num_layers, config.model.model_dim = 1, 16
    config.trainer.max_steps, config.optimizer.learning_rate.warmup_steps = 4, 1
    OmegaConf.save(config, root / "token_lm.yaml")
    # One "é" (UTF-8 bytes 195, 169) 3 MB into the file, between the blocks of the sampled
    # check: only the largest id recorded at tokenize time finds it.
    text = "x" * 3_000_000 + "é" + "x" * 1_000_000
    (root / "big.txt").write_text(text, encoding="utf-8")
    tokenize_files([root / "big.txt"], root / "big.bin")
    sidecars = {
        "bad_json": '{"dtype": "uint16",\n',
        "list": "[256, 1000]",
        "abc": '{"dtype": "uint16", "vocab_size": "abc"}',
        "stale": '{"dtype": "uint16", "vocab_size": 256, "num_tokens": 5, "max_id": 120}',
    }
    for name, sidecar in sidecars.items():
        np.full(1000, 120, np.uint16).tofile(root / f"{name}.bin")
        (root / f"{name}.bin.json").write_text(sidecar)
    # A token file of one BPE tokenizer, and another tokenizer to read it with.
    from paxtrain.data.bpe import train_bpe

    for name in ("tok_a", "tok_b"):
        text = root / f"{name}.txt"
        text.write_text((ROOT / "README.md").read_text(encoding="utf-8")[: 20000 if name == "tok_a" else 9000])
        train_bpe([text], 300, root / f"{name}.json")
    tokenize_files([root / "tok_a.txt"], root / "bpe.bin", tokenizer=root / "tok_a.json")


RUN = ["trainer.checkpoint.every_steps=2"]  # the run directories' checkpoints: steps 2 and 4


def write_run_dirs(root):
    """A run directory of `fit(*RUN)` without checkpoints, one whose newest checkpoint is
    unreadable, one whose checkpoints all are, one with only a checkpoint moved aside."""
    import shutil

    assert main([*fit(*RUN), f"run_dir={root / 'run'}"]) == 0
    (root / "no_checkpoint").mkdir()
    shutil.copy(root / "run" / "config.yaml", root / "no_checkpoint" / "config.yaml")
    for name, damaged in (("newest_unreadable", [4]), ("all_unreadable", [2, 4])):
        shutil.copytree(root / "run", root / name)
        for step in damaged:
            (root / name / "checkpoints" / str(step) / "meta" / "metadata").write_text("{not json")
    shutil.copytree(root / "run", root / "set_aside")
    shutil.rmtree(root / "set_aside" / "checkpoints" / "2")
    (root / "set_aside" / "checkpoints" / "4").rename(root / "set_aside" / "checkpoints" / "4.corrupt")


def write_image_files(root):
    """8x8 images and labels as configs/data/npy.yaml reads them, good and bad; MNIST-format
    directories with NaN images and negative labels."""
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(32, 8, 8, 1)).astype(np.float32), np.arange(32) % 10
    nan_images = images.copy()
    nan_images[5, 3, 3, 0] = np.nan
    arrays = {
        "x": images, "y": labels.astype(np.int32), "y_float": labels.astype(np.float32),
        "y_ten": np.where(labels == 9, 10, labels), "y_negative": np.where(labels == 3, -1, labels),
        "x_nan": nan_images, "x_int16": (images * 100).astype(np.int16),
        "x_rgb": np.repeat(images, 3, axis=-1),
    }  # fmt: skip
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array)
    for name, idx_images, idx_labels in (
        ("mnist_nan", nan_images[..., 0], labels.astype(np.uint8)),
        ("mnist_negative", images[..., 0], np.where(labels == 3, -1, labels).astype(np.int8)),
    ):
        (root / name).mkdir()
        for split in ("train", "t10k"):
            write_idx(root / name / f"{split}-images-idx3-ubyte", idx_images)
            write_idx(root / name / f"{split}-labels-idx1-ubyte", idx_labels)


def write_hf_checkpoints(root):
    """Broken copies of the Llama Hugging Face fixture, and a config of another architecture."""
    from paxtrain.hf.safetensors import checkpoint_tensors, open_tensor, write_checkpoint

    source = ROOT / "tests" / "fixtures" / "hf" / "llama"
    config = json.loads((source / "config.json").read_text())
    tensors = {n: np.array(open_tensor(e)) for n, e in checkpoint_tensors(source).items()}
    k_proj = "model.layers.1.self_attn.k_proj.weight"
    variants = {
        "hf_no_norm": ({k: v for k, v in tensors.items() if k != "model.norm.weight"}, config),
        "hf_transposed": ({**tensors, k_proj: np.ascontiguousarray(tensors[k_proj].T)}, config),
        "hf_yarn": (tensors, {**config, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}),
        "hf_sharded": (tensors, config),
    }
    for name, (arrays, values) in variants.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(values))
        shard = 60_000 if name == "hf_sharded" else None  # 2 files: the index names both
        write_checkpoint(root / name, arrays, max_shard_bytes=shard)
    (root / "hf_sharded" / "model-00002-of-00002.safetensors").unlink()
    (root / "hf_bert").mkdir()
    (root / "hf_bert" / "config.json").write_text('{"architectures": ["BertModel"]}')
def write_finished_run(root):
    """A run directory as a 4-step fit over a 4-step schedule leaves it: its config, and a
    checkpoint at step 4 recording the schedule's horizon (the rows refuse before any read)."""
    from omegaconf import OmegaConf

    from paxtrain.checkpoint.store import CheckpointManager

    run = root / "finished_run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(compose(CHAR_RNN, TINY)))
    manager = CheckpointManager(run / "checkpoints", async_save=False)
    state = OtherState(model={"embed": {"weight": np.zeros((5, 8))}}, step=4)
    manager.save(state, meta={"schedule_horizon": 4})
    manager.close()


def transformer(*overrides):
    """A one-layer transformer_lm, small enough to trace at once."""
    return ["fit", "transformer_lm", "model.num_layers=1", "model.model_dim=16", "data.seq_len=16",
            "data.max_chars=20000", "optimizer.learning_rate.warmup_steps=1",
            "trainer.max_steps=4", "callbacks=[]", *overrides]  # fmt: skip


def write_idx(path, array):
    """An IDX file from the format's definition: zero bytes, type code, dims, big-endian data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, code[array.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def snapshot(folder):
    """Every file under `folder` with its bytes: a row must change none of them."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


OtherState = collections.namedtuple("OtherState", "model step")


def fit(*overrides):
    return ["fit", CHAR_RNN, *TINY, *overrides]


def lora(*overrides):
    """A LoRA fine-tune of char_rnn (its `Linear`s: the cell's two and the head)."""
    return fit("init_from={files}/other_model", "finetune.lora.rank=4",
               "finetune.lora.paths=[head]", *overrides)  # fmt: skip


def tokenize(*arguments):
    return ["data", "tokenize", *arguments]


def tokens(path, *overrides):
    return ["fit", "{files}/token_lm.yaml", f"data.path={{files}}/{path}", *overrides]


def npy(*overrides, x="x", y="y"):
    """The image recipe on .npy columns; `x`, `y`: the training images' and labels' files."""
    return [
        "fit", IMAGES, "data=npy", f"data.train.images={{files}}/{x}.npy",
        f"data.train.labels={{files}}/{y}.npy", "data.eval.images={files}/x.npy",
        "data.eval.labels={files}/y.npy", "data.info.num_classes=10",
        "data.info.image_shape=[8,8,1]", "data.batch_size=8", "model.channels=[4]", *overrides,
    ]  # fmt: skip


def hf_fit(directory, recipe="llama_lm"):
    """A fine-tune of a recipe from a Hugging Face checkpoint directory under {files}."""
    return [
        "fit", recipe, f"init_from=hf:{{files}}/{directory}", "trainer.max_steps=4",
        "optimizer.learning_rate.warmup_steps=1", "callbacks=[]", "data.seq_len=16",
        "data.batch_size=4", "data.max_chars=20000",
    ]  # fmt: skip


def export(*arguments):
    return ["export", "{files}/other_model", "--format", "hf", *arguments]


# (row id, argv with {files} and {run} placeholders, words the message must contain)
ROWS = [
    ("wrong type in a _target_ section", fit("data.seq_len=abc"), ["`data.seq_len`", "int"]),
    ("zero batch size", fit("data.batch_size=0"), ["`data.batch_size`", "at least 1"]),
    ("zero seq_len", fit("data.seq_len=0"), ["`data.seq_len`", "at least 1"]),
    ("zero hidden_dim", fit("model.hidden_dim=0"), ["`model.hidden_dim`", "at least 1"]),
    ("negative embed_dim", fit("model.embed_dim=-3"), ["`model.embed_dim`", "at least 1"]),
    ("negative batch size", fit("data.batch_size=-1"), ["`data.batch_size`", "at least 1"]),
    ("nan learning rate", fit("optimizer.learning_rate.peak_value=nan"), ["`optimizer.learning_rate.peak_value`", "finite"]),
    ("word as learning rate", fit("optimizer.learning_rate=abc"), ["`optimizer.learning_rate`", "a number | a _target_ section"]),
    ("word as an optax array-like", fit("optimizer.b1=abc"), ["`optimizer.b1`", "a number"]),
    ("ema decay above 1", fit("trainer.ema_decay=1.5"), ["`trainer.ema_decay` is 1.5", "[0, 1)"]),
    ("negative ema decay", fit("trainer.ema_decay=-0.1"), ["`trainer.ema_decay`", "[0, 1)"]),
    ("zero rollback factor", fit("trainer.rollback_lr_factor=0"), ["`trainer.rollback_lr_factor` is 0", "(0, 1]"]),
    ("batch not split by grad_accum_steps", fit("trainer.grad_accum_steps=3"), ["grad_accum_steps=3 does not divide", "multiple of grad_accum_steps"]),
    ("cuDNN attention on a CPU", ["fit", "transformer_lm", "model.attention=cudnn", "optimizer.learning_rate.warmup_steps=1", "trainer.max_steps=4", "run_dir={run}"], ["needs an NVIDIA GPU", "model.attention=xla"]),
    ("profile past the last step", fit("trainer.profile.start_step=10"), ["`trainer.profile.start_step` is 10", "no trace"]),
    ("warmup longer than the run", fit("optimizer.learning_rate.warmup_steps=4"), ["`optimizer.learning_rate.warmup_steps` is 4", "warm up for fewer steps"]),
    ("zero max_steps", fit("trainer.max_steps=0"), ["`trainer.max_steps`", "at least 1"]),
    ("negative max_steps", fit("trainer.max_steps=-1"), ["`trainer.max_steps`", "at least 1"]),
    ("zero log_every", fit("trainer.log_every=0"), ["`trainer.log_every`", "at least 1"]),
    ("zero eval_every", fit("trainer.eval_every=0"), ["`trainer.eval_every`", "at least 1"]),
    ("empty data file", fit("data.path={files}/empty.txt"), ["`data`", "empty.txt is empty", "data.path"]),
    ("binary data file", fit("data.path={files}/binary.txt"), ["binary.txt", "not UTF-8", "data.path"]),
    ("directory as data.path", fit("data.path={files}/a_directory"), ["a_directory", "is a directory", "data.path"]),
    ("directory as the config", ["fit", "{files}/a_directory"], ["a_directory", "is a directory", "YAML file"]),
    ("text file as the config", ["fit", "{files}/short.txt"], ["short.txt", "not a YAML file"]),
    ("data shorter than one window", fit("data.path={files}/short.txt"), ["too few", "data.seq_len"]),
    ("batch larger than the text", fit("data.path={files}/medium.txt", "data.batch_size=64"), ["larger than", "data.batch_size"]),
    ("batch larger than the images", ["fit", IMAGES, "data.batch_size=5000"], ["larger than the 1437 training images", "data.batch_size"]),
    ("malformed YAML", ["fit", "{files}/bad.yaml"], ["bad.yaml", "not valid YAML", "line 3"]),
    ("fit without a config", ["fit"], ["config", "required", "paxtrain fit --help"]),
    ("neither a file nor a packaged config", ["fit", "char_rn"], ["'char_rn'", "packaged config: char_rnn, image_classifier, llama_lm, transformer_lm"]),
    ("a flag for a config key", ["fit", CHAR_RNN, "--max-steps", "5"], ["--max-steps", "trainer.max_steps=5"]),
    ("eval --step foo", ["eval", "{files}", "--step", "foo"], ["--step", "'foo'", "latest, best or a step number"]),
    ("run_dir is a file", fit("run_dir={files}/empty.txt"), ["empty.txt", "is a file", "run_dir="]),
    ("freeze pattern matching nothing", fit("freeze=['^encoder$']"), ["`freeze`", "'^encoder$'", "matches no submodule"]),
    ("init_from with other shapes", fit("init_from={files}/other_model"), ["embed.weight", "`init_from_include`"]),
    ("misspelled early-stopping monitor", fit("trainer.early_stopping.monitor=eval/lss"), ["`trainer.early_stopping.monitor`", "`eval/lss`", "eval/loss"]),
    ("misspelled checkpoint monitor", fit("trainer.checkpoint.monitor=eval/bits_per_chr"), ["`trainer.checkpoint.monitor`", "eval/bits_per_char"]),
    ("keep_best without a monitor", fit("trainer.checkpoint.keep_best=1"), ["keep_best=1", "trainer.checkpoint.monitor=eval/loss"]),
    ("misspelled config group", fit("model=lstmm"), ["model/lstmm", "gru, lstm"]),
    ("unknown choice", fit("trainer.on_nonfinite=ignore"), ["`trainer.on_nonfinite`", "'ignore'", "'rollback'"]),
    ("a sweep that cannot be listed", fit("-m", "seed=interval(0,1)"), ["`seed=interval(0,1)`", "seed=range("]),
    ("unparsable sweep", fit("-m", "seed=range(1,"), ["'seed=range(1,'", "cannot be parsed"]),
    ("resume a missing directory", ["resume", "{run}"], ["does not exist", "run"]),
    ("tokenize without OUT", tokenize("{files}/short.txt"), ["required: OUT", "paxtrain data tokenize --help"]),
    ("tokenize with OUT forgotten", tokenize("{files}/short.txt", "{files}/medium.txt"), ["medium.txt exists", "does not write over a file", "medium.bin", "--force"]),
    ("tokenize over an existing token file", tokenize("{files}/short.txt", "{files}/existing.bin"), ["existing.bin exists", "--force"]),
    ("tokenize over an input", tokenize("{files}/short.txt", "{files}/short.txt", "--force"), ["short.txt is also an input", "short.bin"]),
    ("tokenize into a directory", tokenize("{files}/short.txt", "{files}/a_directory"), ["a_directory is a directory", "a_directory/tokens.bin"]),
    ("tokenize a directory", tokenize("{files}/a_directory", "out.bin"), ["a_directory is a directory", "a_directory/*.txt"]),
    ("tokenize a binary file", tokenize("{files}/binary.txt", "out.bin"), ["binary.txt is not UTF-8 text", "NUL byte at byte 0", "iconv"]),
    ("tokenize text not UTF-8 after 1 KiB", tokenize("{files}/latin1.txt", "out.bin"), ["latin1.txt is not UTF-8 text", "byte 3003 is b'\\xe9'"]),
    ("tokenize non-ASCII text as chars", tokenize("{files}/unicode.txt", "out.bin", "--vocab", "chars"), ["200 of the 1080 characters (18.5%) are outside `--vocab chars`", "'ü' x40", "--vocab bytes", "--max-unknown 0.186"]),
    ("token ids above the vocabulary between sampled blocks", tokens("big.bin", "data.vocab_size=128"), ["big.bin holds ids up to 195", "big.bin.json", "vocab_size=128", "at least 196"]),
    ("token sidecar not JSON", tokens("bad_json.bin"), ["bad_json.bin.json is malformed", "Expecting", "paxtrain data tokenize", "data.vocab_size"]),
    ("token sidecar a JSON list", tokens("list.bin"), ["list.bin.json is malformed", "a JSON list, not an object", "data.vocab_size"]),
    ("token sidecar with vocab_size abc", tokens("abc.bin"), ["abc.bin.json is malformed", "\"vocab_size\" is 'abc', not a positive integer"]),
    ("token sidecar of another file", tokens("stale.bin"), ["stale.bin holds 1000 uint16 ids", "describes 5", "--force"]),
    ("eval_fraction above 1", fit("data.eval_fraction=1.5"), ["eval_fraction=1.5", "between 0 and 1", "data.eval_fraction=0.1"]),
    ("eval_fraction above 1 of a token file", tokens("big.bin", "data.eval_fraction=1.5"), ["eval_fraction=1.5", "data.eval_fraction=0.1"]),
    (".npy labels stored as floats", npy(y="y_float"), ["data.train.labels", "y_float.npy", "the labels are float32", "astype(np.int32)"]),
    (".npy label equal to num_classes", npy(y="y_ten"), ["data.train.labels", "label 10 at example 9 (3 labels outside [0, 10))", "data.info.num_classes", "at least 11"]),
    (".npy negative labels", npy(y="y_negative"), ["y_negative.npy", "label -1 at example 3 (3 negative labels)"]),
    (".npy eval label equal to num_classes", npy("data.eval.labels={files}/y_ten.npy"), ["data.eval.labels", "label 10 at example 9"]),
    (".npy images with NaN", npy(x="x_nan"), ["data.train.images", "x_nan.npy", "1 images hold NaN or Inf values (the first: example 5)", "np.nan_to_num"]),
    (".npy int16 images", npy(x="x_int16"), ["the images are int16", "float32"]),
    (".npy images of another shape", npy(x="x_rgb"), ["the images have shape [32, 8, 8, 3]", "`data.info.image_shape=[8,8,3]`"]),
    ("negative data.workers", npy("data.workers=-1"), ["workers=-1", "data.workers=2"]),
    ("MNIST images with NaN", ["fit", IMAGES, "data.source=mnist", "data.path={files}/mnist_nan", "data.batch_size=8"], ["train split of the MNIST files", "mnist_nan", "1 images hold NaN or Inf values"]),
    ("tokenizer with too few ids", ["data", "tokenizer", "train", "{files}/medium.txt", "--vocab-size", "100", "--out", "tok.json"], ["--vocab-size is 100", "at least 258", "--vocab-size 4096"]),
    ("tokenizer over an existing file", ["data", "tokenizer", "train", "{files}/medium.txt", "--vocab-size", "300", "--out", "{files}/existing.bin"], ["existing.bin exists", "--force"]),
    ("tokenizer over its input", ["data", "tokenizer", "train", "{files}/medium.txt", "--vocab-size", "300", "--out", "{files}/medium.txt", "--force"], ["medium.txt is also an input"]),
    ("tokenize with a corrupt tokenizer.json", tokenize("{files}/medium.txt", "out.bin", "--tokenizer", "{files}/bad.yaml"), ["bad.yaml is not a readable tokenizer.json", "paxtrain data tokenizer train"]),
    ("tokenize with a missing tokenizer.json", tokenize("{files}/medium.txt", "out.bin", "--tokenizer", "{files}/nope.json"), ["nope.json is not a readable tokenizer.json", "No such file"]),
    ("token file read with another tokenizer", tokens("bpe.bin", "data.tokenizer={files}/tok_b.json"), ["bpe.bin was written with the tokenizer", "tok_a.json", "tok_b.json", "tokenize the text again"]),
    ("bytes token file read with a tokenizer", tokens("big.bin", "data.tokenizer={files}/tok_a.json"), ["big.bin holds bytes ids", "records no tokenizer", "--tokenizer"]),
    ("MNIST negative labels", ["fit", IMAGES, "data.source=mnist", "data.path={files}/mnist_negative", "data.batch_size=8"], ["train split of the MNIST files", "label -1 at example 3"]),
    # --- hydra ---
    ("unknown sweeper plugin", fit("-m", "hydra/sweeper=optima", "seed=1,2"), ["`hydra/sweeper=optima`", "no sweeper 'optima'", "Installed: basic, optuna"]),
    ("unknown launcher plugin", fit("-m", "hydra/launcher=jobllib", "seed=1,2"), ["no launcher 'jobllib'", "joblib"]),
    ("sweeper plugin not installed", fit("-m", "hydra/sweeper=nevergrad", "seed=1,2"), ["hydra-nevergrad-sweeper", "not installed", "pip install hydra-nevergrad-sweeper"]),
    ("sweeper maximizing a metric the config minimizes", fit("-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "optimizer.learning_rate.peak_value=interval(1e-4,1e-2)"), ["direction is maximize", "`eval/loss`", "hydra.sweeper.direction=minimize"]),
    ("two monitored metrics as one objective", fit("-m", "hydra/sweeper=optuna", "trainer.checkpoint.monitor=eval/loss", "trainer.early_stopping.monitor=eval/bits_per_char", "seed=range(0,9)"), ["one objective", "trainer.checkpoint.monitor=eval/loss", "trainer.early_stopping.monitor=eval/bits_per_char"]),
    ("a misspelt sweeper setting", fit("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trial=6", "seed=range(0,9)"), ["hydra.sweeper.n_trial", "n_trials"]),
    ("a swept key given twice", fit("-m", "seed=1,2,3", "seed=5"), ["`seed` is given twice", "seed=1,2,3,5"]),
    ("an interval without a sweeper", fit("-m", "optimizer.learning_rate.peak_value=interval(1e-4,1e-2)"), ["interval sweep", "hydra/sweeper=optuna"]),
    ("two launchers", fit("-m", "hydra/launcher=joblib", "seed=1,2", "--launcher", "local"), ["--launcher local", "hydra/launcher=joblib", "not both"]),
    ("a Hydra setting paxtrain makes", fit("-m", "hydra.sweep.dir=elsewhere", "seed=1,2"), ["`hydra.sweep.dir=elsewhere`", "paxtrain sets", "run_dir=DIR"]),
    ("a swept value of the wrong type", fit("-m", "hydra/launcher=basic", "trainer.log_every=3,abc"), ["`trainer.log_every`", "'abc'", "Integer"]),
    # --- lora ---
    ("LoRA paths matching no Linear", lora("finetune.lora.paths=[q_proj$]"), ["`finetune.lora.paths` pattern 'q_proj$' matches no `Linear`", "'cell.input_to_gates', 'cell.hidden_to_gates', 'head'"]),
    ("LoRA with empty paths", lora("finetune.lora.paths=[]"), ["`finetune.lora.paths` is empty", "'input_to_gates$'"]),
    ("LoRA rank 0", lora("finetune.lora.rank=0"), ["`finetune.lora.rank=0` must be at least 1", "`finetune.lora.rank=8`"]),
    ("LoRA rank above min(in, out)", lora("finetune.lora.rank=400"), ["`finetune.lora.rank=400` must be at most min(in, out)", "`head` is [16, 98]", "at most 16"]),
    ("LoRA alpha 0", lora("finetune.lora.alpha=0"), ["`finetune.lora.alpha=0.0` must be positive", "`finetune.lora.alpha=16`"]),
    ("LoRA dropout 1", lora("finetune.lora.dropout=1.0"), ["`finetune.lora.dropout=1.0` must satisfy 0 <= dropout < 1"]),
    ("LoRA without init_from", fit("finetune.lora.rank=4", "finetune.lora.paths=[head]"), ["`finetune.lora.rank=4`", "`init_from` is null", "init_from=runs/NAME"]),
    ("LoRA paths without a rank", fit("init_from={files}/other_model", "finetune.lora.paths=[head]"), ["`finetune.lora.rank` is null", "`finetune.lora.rank=8`"]),
    # --- safety_ckpt ---
    ("resume a run without a checkpoint", ["resume", "{files}/no_checkpoint"], ["no_checkpoint has no checkpoint to resume from", "paxtrain fit CONFIG run_dir=", "--restart"]),
    ("eval --step latest of an unreadable newest checkpoint", ["eval", "{files}/newest_unreadable"], ["is unreadable: step 4 (", "Nothing was changed", "newest readable checkpoint is step 2", "`--step 2`"]),
    ("eval of a run whose checkpoints are all unreadable", ["eval", "{files}/all_unreadable"], ["No readable checkpoint", "tried step 4 (", "; step 2 (", "Put a good copy"]),
    ("eval of a named step that is unreadable", ["eval", "{files}/newest_unreadable", "--step", "4"], ["Checkpoint step 4 in", "is unreadable (", "no other step is used instead", "steps 2, 4"]),
    ("fit on a run whose checkpoints are all unreadable", fit(*RUN, "run_dir={files}/all_unreadable"), ["No readable checkpoint", "tried step 4 (", "; step 2 (", "Nothing was changed on disk", "--restart"]),
    ("resume of a run whose checkpoints are all unreadable", ["resume", "{files}/all_unreadable"], ["No readable checkpoint", "Nothing was changed on disk", "--restart"]),
    ("fit on a run with only a checkpoint moved aside", fit(*RUN, "run_dir={files}/set_aside"), ["holds no checkpoint, only damaged ones moved aside earlier (4.corrupt)", "--restart"]),
    ("resume of a run with only a checkpoint moved aside", ["resume", "{files}/set_aside"], ["4.corrupt", "--restart"]),
    # --- telemetry ---
    ("summary without a config", ["summary"], ["config", "required", "paxtrain summary --help"]),
    ("summary of an unknown config", ["summary", "char_rn"], ["'char_rn'", "packaged config: char_rnn"]),
    ("summary with a misspelled key", ["summary", "char_rnn", "trainer.max_stesp=5"], ["`trainer.max_stesp`", "`trainer.max_steps`"]),
    ("summary with a bad value", ["summary", "char_rnn", "data.batch_size=0"], ["`data.batch_size` is 0", "at least 1"]),
    ("summary on more devices than there are", ["summary", "char_rnn", "mesh.data=3"], ["data=3", "needs 3 devices", "mesh.data=-1"]),
    ("summary with a zero mesh axis", ["summary", "char_rnn", "mesh.fsdp=0"], ["fsdp=0", "positive integers"]),
    ("summary of pmap with an fsdp axis", ["summary", "char_rnn", "parallel.strategy=pmap", "mesh.fsdp=2"], ["fsdp=2", "mesh.fsdp=1"]),
    ("summary with a flag", ["summary", "char_rnn", "--step", "3"], ["unrecognized arguments: --step"]),
    ("negative peak TFLOP/s", fit("trainer.peak_tflops=-1"), ["`trainer.peak_tflops` is -1.0", "must be positive"]),
    ("watchdog not above 1", fit("trainer.watchdog=1"), ["`trainer.watchdog` is 1.0", "above 1"]),
    ("watchdog without a minimum", fit("trainer.watchdog=5", "trainer.watchdog_min_seconds=0"), ["`trainer.watchdog_min_seconds` is 0.0", "positive"]),
    ("memory profile without a step", fit("trainer.profile.memory=true"), ["`trainer.profile.memory=true`", "trainer.profile.start_step=10"]),
    # --- hf ---
    ("init_from=hf: a directory that is no checkpoint", hf_fit("a_directory"), ["a_directory is not a Hugging Face checkpoint directory", "no config.json", "init_from=hf:"]),
    ("init_from=hf: an unsupported architecture", hf_fit("hf_bert"), ["describes a BertModel", "LlamaForCausalLM and GPT2LMHeadModel"]),
    ("init_from=hf: a checkpoint of another recipe", ["fit", "transformer_lm", f"init_from=hf:{FIXTURES}/llama"], ["holds a LlamaForCausalLM", "paxtrain fit llama_lm"]),
    ("init_from=hf: a mismatched shape", hf_fit("hf_transposed"), ["`model.layers.1.self_attn.k_proj.weight` has shape (32, 16)", "`blocks.layers.1.attention.key_proj.weight` (32, 16) needs (16, 32)"]),
    ("init_from=hf: a missing tensor", hf_fit("hf_no_norm"), ["has no tensor `model.norm.weight`", "`final_norm.scale`"]),
    ("init_from=hf: an index naming a missing file", hf_fit("hf_sharded"), ["model.safetensors.index.json puts", "model-00002-of-00002.safetensors, which is not in", "Fetch"]),
    ("init_from=hf: an unknown rope scaling", hf_fit("hf_yarn"), ["hf_yarn/config.json", "rope_type 'yarn'", "\"llama3\""]),
    ("init_from=hf: data with more ids than the vocabulary", tokens("big.bin", f"init_from=hf:{FIXTURES}/gpt2", "data.seq_len=16"), ["has a vocabulary of 128, but the data's is 256", "tokenizer"]),
    ("init_from=hf: a longer context than the positions", ["fit", "transformer_lm", f"init_from=hf:{FIXTURES}/gpt2", "data.seq_len=128"], ["has a context (position embeddings) of 64, but the data's is 128", "data.seq_len"]),
    ("export over a non-empty directory", export("--out", "{files}"), ["is not empty", "--force"]),
    ("export with a shard size of abc", export("--out", "out", "--max-shard-size", "abc"), ["--max-shard-size 'abc' is not a size", "2GB"]),
    ("export to another format", export("--out", "out", "--format", "onnx"), ["--format", "'onnx'", "paxtrain export --help"]),
    # --- lm ---
    ("tokenize a JSONL column that is not there", tokenize("{files}/docs.jsonl", "out.bin", "--column", "body"), ["docs.jsonl:1 has no column 'body'", "['id', 'text']", "--column NAME"]),
    ("tokenize a JSONL column holding a number", tokenize("{files}/numbers.jsonl", "out.bin"), ["numbers.jsonl:2: column 'text' holds 7 (int), not text", "--column NAME"]),
    ("tokenize a malformed JSONL line", tokenize("{files}/broken.jsonl", "out.bin"), ["broken.jsonl:2 is not a JSON object (Expecting value at column 10)", "one JSON object per line"]),
    ("tokenize text files with --column", tokenize("{files}/short.txt", "out.bin", "--column", "body"), ["--column 'body'", "short.txt", "drop `--column`"]),
    # --- safety_run ---
    ("unknown preemption signal", fit("trainer.preemption_signals=[SIGFOO]"), ["`trainer.preemption_signals`", "names 'SIGFOO', not a signal", "SIGTERM"]),
    ("uncatchable preemption signal", fit("trainer.preemption_signals=[SIGTERM,SIGKILL]"), ["'SIGKILL'", "cannot be caught"]),
    ("a callback that builds no hook", fit("callbacks=[{{_target_: builtins.print}}]"), ["`callbacks[0]` (builtins.print) built None, not a hook", "paxtrain.train.hooks.Hook"]),
    ("a callback that builds another object", fit("callbacks=[{{_target_: collections.OrderedDict}}]"), ["built a OrderedDict, not a hook"]),
    ("run_dir name over the file system's limit", fit("run_dir={files}/" + "r" * 300), ["is 300 bytes long", "255 bytes per name", "shorter `run_dir=`"]),
    ("float16 attention on a CPU", transformer("trainer.precision=float16"), ["`trainer.precision`", "does not run in float16 on the cpu backend", "F16", "`trainer.precision=bfloat16`"]),
    ("float16 policy string on a CPU", transformer('trainer.precision="params=float32,compute=float16"'), ["does not run in float16 on the cpu backend"]),
    ("float16 parameters", fit('trainer.precision="params=float16,compute=float16"'), ["`trainer.precision`", "params=float16 keeps no float32 master copy", "float32 parameters"]),
    ("int8 compute", fit('trainer.precision="params=float32,compute=int8"'), ["`trainer.precision`", "compute=int8 is not a floating-point dtype"]),
    ("int output", fit('trainer.precision="output=int32"'), ["output=int32 is not a floating-point dtype"]),
    ("unquoted precision policy", fit("trainer.precision=params=float32,compute=bfloat16"), ["`trainer.precision=params=float32,compute=bfloat16` cannot be parsed", "'trainer.precision=\"params=float32,compute=bfloat16\"'"]),
    ("unquoted non-ASCII run_dir", fit("run_dir={files}/été"), ["cannot be parsed", "token recognition error", "'run_dir=\""]),
    ("misspelled optimizer alias", fit("optimizer._target_=adamx"), ["`optimizer._target_` is 'adamx'", "`adamw`", "`optax.adamax`", "Short names: adam, adamw, sgd"]),
    ("misspelled optax factory", fit("optimizer._target_=optax.adamx"), ["cannot import 'optax.adamx'", "Did you mean `optax.adamax`"]),
    ("lr for learning_rate", fit("optimizer.lr=0.1"), ["`optimizer.lr`", "Did you mean `optimizer.learning_rate`?"]),
    ("negative clip norm", fit("optimizer.clip_grad_norm=-1"), ["`optimizer.clip_grad_norm` is -1", "gradient ascent", "above 0", "`optimizer.clip_grad_norm=1.0`"]),
    ("zero clip norm", fit("optimizer.clip_grad_norm=0"), ["`optimizer.clip_grad_norm` is 0", "zeroes every gradient"]),
    ("negative warmup", fit("optimizer.learning_rate.warmup_steps=-5"), ["`optimizer.learning_rate.warmup_steps` is -5", "0 or more"]),
    ("b1 above 1", fit("optimizer.b1=1.5"), ["`optimizer.b1` is 1.5", "in [0, 1)", "`optimizer.b1=0.9`"]),
    ("b2 equal to 1", fit("optimizer.b2=1.0"), ["`optimizer.b2` is 1.0", "`optimizer.b2=0.999`"]),
    ("negative weight decay", fit("optimizer.weight_decay=-0.1"), ["`optimizer.weight_decay` is -0.1", "away from 0"]),
    ("negative eps", fit("optimizer.eps=-1e-8"), ["`optimizer.eps` is -1e-08", "0 or more"]),
    ("sgd momentum of 1", fit("optimizer._target_=sgd", "~optimizer.weight_decay", "optimizer.momentum=1"), ["`optimizer.momentum` is 1", "in [0, 1)"]),
    ("no loggers with the plot on", fit("trainer.loggers=[]"), ["`trainer.loggers` is []", "curves.png", "metrics.jsonl", "`trainer.plot=false`"]),
    ("tensorboard only with the plot on", fit("trainer.loggers=[tensorboard]"), ["`trainer.loggers` is ['tensorboard']", "add jsonl"]),
    ("a logger section that is no jsonl, the plot on", fit("trainer.loggers=[{{_target_: paxtrain.train.logger.TensorBoardLogger}}]"), ["`trainer.loggers` is [", "TensorBoardLogger", "add jsonl"]),
    ("a mesh larger than the devices", fit("mesh.data=1", "mesh.fsdp=7"), ["fsdp=7", "needs 7 devices", "(in a config: `mesh.data=-1 mesh.fsdp=1`)"]),
    ("a logger named twice", fit("trainer.loggers=[jsonl,tensorboard,jsonl]"), ["`trainer.loggers` names jsonl twice", "name it once"]),
    ("rollback without checkpoints", fit("trainer.on_nonfinite=rollback", "trainer.checkpoint.enabled=false"), ["needs checkpoints to roll back to", "trainer.checkpoint.enabled=true"]),
    ("resume past the schedule's end", ["resume", "{files}/finished_run", "trainer.max_steps=8"], ["`trainer.max_steps=8` runs past the end", "over 4 steps", "steps 5 to 8 would train at its final rate, 0", "`optimizer.horizon=8`", "`optimizer.horizon=4`"]),
    # --- tidy ---
    ("keep_best with checkpoints off", fit("trainer.checkpoint.enabled=false", "trainer.checkpoint.keep_best=2", "trainer.checkpoint.monitor=eval/loss"), ["`trainer.checkpoint.keep_best=2`", "`trainer.checkpoint.enabled=false`", "`trainer.checkpoint.enabled=true`", "`trainer.checkpoint.keep_best=0`"]),
    ("monitor with checkpoints off", fit("trainer.checkpoint.enabled=false", "trainer.checkpoint.monitor=eval/loss"), ["`trainer.checkpoint.monitor=eval/loss`", "`trainer.checkpoint.enabled=false`", "`trainer.checkpoint.monitor=null`"]),
]  # fmt: skip


def run_row(argv, files, run, capsys):
    argv = [a.format(files=files, run=run) for a in argv]
    if argv[:1] == ["fit"] and len(argv) > 1 and not any(a.startswith("run_dir=") for a in argv):
        argv.append(f"run_dir={run}")
    with pytest.raises(SystemExit) as exited:
        sys.exit(main(argv))
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_input_is_one_message_and_exit_code_2(
    argv, words, files, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    before = snapshot(files)
    code, err = run_row(argv, files, run, capsys)
    assert snapshot(files) == before  # no user file changed
    assert code == 2, err
    assert err.startswith("paxtrain: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not run.exists() and sorted(os.listdir(tmp_path)) == []  # no run directory left


def test_image_recipe_without_scikit_learn_names_the_extra(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code, err = run_row(["fit", IMAGES], files, tmp_path / "run", capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "scikit-learn" in err and '".[recipes]"' in err and "data.source=mnist" in err
    assert os.listdir(tmp_path) == []


def test_a_negative_learning_rate_warns():
    with pytest.warns(
        UserWarning, match=r"`optimizer.learning_rate.peak_value` is -0.003.*peak_value=0.003"
    ):
        compose(CHAR_RNN, ["optimizer.learning_rate.peak_value=-3e-3"])


# Root writes anywhere; without the capability that lets it, it sees the permissions as anyone.
AS_UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.skipif(
    os.geteuid() == 0 and not shutil.which("setpriv"), reason="root without setpriv"
)
def test_an_unwritable_run_dir_is_refused_without_roots_override(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    prefix = AS_UNPRIVILEGED if os.geteuid() == 0 else []
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "paxtrain", "fit", CHAR_RNN, *TINY, f"run_dir={locked}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("paxtrain: ") and result.stderr.count("\n") == 1
    assert f"{locked} is not writable" in result.stderr and "run_dir=" in result.stderr
    assert os.listdir(locked) == []
