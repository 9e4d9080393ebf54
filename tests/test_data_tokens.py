"""TokenFile and `paxtrain data tokenize`: windows of a memmapped token file, indexed by step."""

import doctest
import json

import numpy as np
import pytest
from data_support import Bigram, assert_preempted_resume_is_bitwise_exact

import paxtrain.data.tokenize
import paxtrain.data.tokens
from paxtrain.cli.app import main
from paxtrain.data import ByteVocab, CharVocab, TokenFile
from paxtrain.errors import DataError

VOCAB, N = 50, 5000


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, VOCAB, N).astype(np.uint16).tofile(path)
    return path


def test_tokenize_writes_ids_and_a_sidecar_for_either_vocabulary(tmp_path):
    text = "def f(x):\n\treturn x  # é\n" * 50
    (tmp_path / "a.txt").write_text(text[:700], encoding="utf-8")
    (tmp_path / "b.txt").write_text(text[700:], encoding="utf-8")
    inputs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for name, vocab in (("bytes", ByteVocab()), ("chars", CharVocab())):
        out = tmp_path / f"{name}.bin"
        # One "é" in 25 characters: 4% unknown to `--vocab chars`, accepted up to 5%.
        argv = [*map(str, inputs), str(out), "--vocab", name, "--max-unknown", "0.05"]
        assert main(["data", "tokenize", *argv]) == 0
        ids = np.fromfile(out, dtype=np.uint16)
        np.testing.assert_array_equal(ids, vocab.encode(text))
        meta = json.loads((tmp_path / f"{name}.bin.json").read_text())
        unknown = {"unknown_chars": text.count("é")} if name == "chars" else {}
        assert meta == {
            "dtype": "uint16",
            "vocab": name,
            "vocab_size": len(vocab),
            "num_tokens": len(ids),
            "max_id": int(ids.max()),
            **unknown,
        }
        data = TokenFile(out, seq_len=8, batch_size=2)
        assert data.info["vocab_size"] == len(vocab) and type(data.vocab) is type(vocab)
    assert ByteVocab().decode(np.fromfile(tmp_path / "bytes.bin", dtype=np.uint16)) == text
    assert not list(tmp_path.glob("*.partial"))


def test_windows_are_slices_of_the_file_at_seeded_starts(token_file):
    data = TokenFile(token_file, seq_len=16, batch_size=8, vocab_size=VOCAB)
    tokens = np.fromfile(token_file, dtype=np.uint16)
    batch = data.train_batch(3)
    starts = data.window_starts(3)
    expected = np.stack([tokens[s : s + 17] for s in starts]).astype(np.int32)
    np.testing.assert_array_equal(batch["inputs"], expected[:, :-1])
    np.testing.assert_array_equal(batch["targets"], expected[:, 1:])
    assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape == (8, 16)
    again = TokenFile(token_file, seq_len=16, batch_size=8, vocab_size=VOCAB).train_batch(3)
    np.testing.assert_array_equal(again["inputs"], batch["inputs"])
    assert not np.array_equal(data.train_batch(4)["inputs"], batch["inputs"])
    other_seed = TokenFile(token_file, seq_len=16, batch_size=8, vocab_size=VOCAB, seed=1)
    assert not np.array_equal(other_seed.train_batch(3)["inputs"], batch["inputs"])
    # Training reads only the first 90%; every start is possible, the last one included.
    split = int(N * 0.9)
    all_starts = np.concatenate([data.window_starts(s) for s in range(2000)])
    assert all_starts.min() == 0 and all_starts.max() == split - 17


def test_eval_reads_the_held_out_tail_or_its_own_file(token_file, tmp_path):
    tokens = np.fromfile(token_file, dtype=np.uint16)
    data = TokenFile(token_file, seq_len=16, batch_size=4, vocab_size=VOCAB, eval_batches=3)
    batches = list(data.eval_batches())
    assert len(batches) == 3 and all(b["inputs"].shape == (4, 16) for b in batches)
    tail = tokens[int(N * 0.9) :]
    first, last = batches[0]["inputs"][0], batches[-1]["targets"][-1]
    np.testing.assert_array_equal(first, tail[:16])  # evenly spaced over the tail, both ends
    np.testing.assert_array_equal(last, tail[-16:])
    val = tmp_path / "val.bin"
    (np.arange(100) % VOCAB).astype(np.uint16).tofile(val)
    data = TokenFile(token_file, seq_len=16, batch_size=4, vocab_size=VOCAB, eval_path=val)
    assert len(data.train_tokens) == N
    np.testing.assert_array_equal(next(data.eval_batches())["inputs"][0], np.arange(16))


def test_bad_token_files_are_named_with_the_fix(tmp_path, token_file):
    with pytest.raises(
        FileNotFoundError, match="(?s)Token file not found: .*missing.bin.*tokenize"
    ):
        TokenFile(tmp_path / "missing.bin", vocab_size=VOCAB)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty.bin is empty"):
        TokenFile(tmp_path / "empty.bin", vocab_size=VOCAB)
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="has 7 bytes, not a multiple of 2 .*data.dtype"):
        TokenFile(tmp_path / "odd.bin", vocab_size=VOCAB)
    with pytest.raises(
        DataError, match=r"holds id 4\d at position \d+, but vocab_size=40.* at least 50"
    ):
        TokenFile(token_file, vocab_size=40)
    with pytest.raises(DataError, match="4500 tokens, too few for windows of seq_len\\+1=5001"):
        TokenFile(token_file, seq_len=5000, vocab_size=VOCAB)
    with pytest.raises(DataError, match="no sidecar .*tokens.bin.json.*data.vocab_size"):
        TokenFile(token_file)
    with pytest.raises(DataError, match="dtype='int8' is not a token file dtype"):
        TokenFile(token_file, dtype="int8", vocab_size=VOCAB)


def test_an_id_out_of_the_vocabulary_is_found_far_into_a_file(tmp_path):
    path = tmp_path / "big.bin"
    tokens = np.zeros(3_000_000, np.uint16)
    tokens[-1] = 7  # the last block of the sample ends at the last token
    tokens.tofile(path)
    with pytest.raises(DataError, match="holds id 7 at position 2999999"):
        TokenFile(path, vocab_size=7)


def test_cli_reports_bad_data_in_one_line_with_exit_2(tmp_path, capsys):
    assert main(["data", "tokenize", str(tmp_path / "none.txt"), str(tmp_path / "t.bin")]) == 2
    (tmp_path / "empty.txt").write_text("")
    assert main(["data", "tokenize", str(tmp_path / "empty.txt"), str(tmp_path / "t.bin")]) == 2
    assert not (tmp_path / "t.bin").exists()
    (tmp_path / "short.txt").write_text("x" * 100)
    assert main(["data", "tokenize", str(tmp_path / "short.txt"), str(tmp_path / "t.bin")]) == 0
    overrides = [
        "data._target_=paxtrain.data.TokenFile", f"data.path={tmp_path / 't.bin'}",
        f"run_dir={tmp_path / 'run'}", "optimizer.learning_rate.warmup_steps=0", "trainer.max_steps=2",
    ]  # fmt: skip
    assert main(["fit", "configs/transformer_lm.yaml", *overrides]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("paxtrain: Text file not found: ") and "none.txt" in lines[0]
    assert any(line.startswith("paxtrain: ") and "hold no text" in line for line in lines)
    assert "too few for windows of seq_len+1=129" in lines[-1]
    assert "Traceback" not in "\n".join(lines)


def test_preempted_resume_through_a_token_file_is_bitwise_exact(token_file, tmp_path):
    assert_preempted_resume_is_bitwise_exact(
        lambda: Bigram(VOCAB),
        lambda: TokenFile(token_file, seq_len=8, batch_size=4, vocab_size=VOCAB, eval_batches=1),
        tmp_path,
    )


@pytest.mark.parametrize("module", [paxtrain.data.tokens, paxtrain.data.tokenize])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
