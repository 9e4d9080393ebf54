"""Bad input, as a table: every row ends with exit code 2 and one `paxtrain:` line that names
the key or file and the fix, no traceback, and no run directory left behind.

The rows call the command line's `main` in this process: each fails before anything is
compiled, so the whole table takes seconds."""

import collections
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
    manager.close()
    return root


OtherState = collections.namedtuple("OtherState", "model step")


def fit(*overrides):
    return ["fit", CHAR_RNN, *TINY, *overrides]


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
    code, err = run_row(argv, files, run, capsys)
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
