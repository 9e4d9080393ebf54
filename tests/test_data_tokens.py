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
            "num_bytes": sum(len(p.read_bytes()) for p in inputs),
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


def test_tokenize_replaces_a_file_only_with_force_and_an_input_never(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("abc")
    out = tmp_path / "a.bin"
    np.arange(4, dtype=np.uint16).tofile(out)
    old = out.read_bytes()
    assert main(["data", "tokenize", str(tmp_path / "a.txt"), str(out)]) == 2
    assert out.read_bytes() == old and not (tmp_path / "a.bin.json").exists()
    assert main(["data", "tokenize", str(tmp_path / "a.txt"), str(out), "--force"]) == 0
    assert np.fromfile(out, dtype=np.uint16).tolist() == [97, 98, 99]
    assert json.loads((tmp_path / "a.bin.json").read_text())["max_id"] == 99
    # A link to an input is the input.
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    with pytest.raises(DataError, match="link.txt is also an input"):
        paxtrain.data.tokenize.tokenize_files(
            [tmp_path / "a.txt"], tmp_path / "link.txt", force=True
        )
    assert (tmp_path / "a.txt").read_text() == "abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin",
        "a.bin.json",
        "a.txt",
        "link.txt",
    ]


def test_tokenize_decodes_strictly_across_chunks_and_leaves_nothing_when_refused(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(paxtrain.data.tokenize, "CHUNK_BYTES", 7)
    text = "ab€cdé" * 300  # "€" is 3 bytes, "é" 2: chunks of 7 bytes cut through them
    (tmp_path / "good.txt").write_text(text, encoding="utf-8")
    paxtrain.data.tokenize.tokenize_files([tmp_path / "good.txt"], tmp_path / "good.bin")
    ids = np.fromfile(tmp_path / "good.bin", dtype=np.uint16)
    np.testing.assert_array_equal(ids, np.frombuffer(text.encode("utf-8"), np.uint8))
    bad = text.encode("utf-8") + b"xyz\xff"
    (tmp_path / "bad.txt").write_bytes(bad)
    with pytest.raises(DataError, match=rf"bad.txt is not UTF-8 text \(byte {len(bad) - 1} is"):
        paxtrain.data.tokenize.tokenize_files([tmp_path / "bad.txt"], tmp_path / "bad.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.txt", "good.bin", "good.bin.json", "good.txt"
    ]  # fmt: skip


def test_tokenize_chars_reports_unknown_characters_under_the_threshold(tmp_path, capsys):
    text = "plain ASCII text " * 30 + "naïve"  # 1 unknown in 515 characters: 0.19%
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    out = str(tmp_path / "t.bin")
    assert main(["data", "tokenize", str(tmp_path / "t.txt"), out, "--vocab", "chars"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"paxtrain: wrote {len(text)} tokens (chars) to {out}",
        "paxtrain: 1 characters (0.2%) outside the vocabulary became the unknown id: 'ï' x1",
    ]
    assert json.loads((tmp_path / "t.bin.json").read_text())["unknown_chars"] == 1


def test_the_max_id_of_the_sidecar_is_checked_against_the_vocabulary(tmp_path, monkeypatch):
    path = tmp_path / "t.bin"
    tokens = np.zeros(3_000_000, np.uint16)
    tokens[2_000_000 + 20_000] = 300  # between two blocks of the sample (one every ~47k ids)
    tokens.tofile(path)
    meta = {"dtype": "uint16", "vocab_size": 301, "num_tokens": len(tokens)}
    # A sidecar without max_id (written before it was recorded): every id is read.
    (tmp_path / "t.bin.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="holds id 300 at position 2020000, but vocab_size=300"):
        TokenFile(path, vocab_size=300)
    # Beyond FULL_CHECK_IDS only a sample is read, which misses this id ...
    monkeypatch.setattr(paxtrain.data.tokens, "FULL_CHECK_IDS", 1_000_000)
    assert TokenFile(path, vocab_size=300).info["vocab_size"] == 300
    # ... but not the largest id recorded at tokenize time.
    (tmp_path / "t.bin.json").write_text(json.dumps({**meta, "max_id": 300}))
    with pytest.raises(DataError, match=r"holds ids up to 300 .*vocab_size=300.*at least 301"):
        TokenFile(path, vocab_size=300)
    assert TokenFile(path).info["vocab_size"] == 301


@pytest.mark.parametrize(
    "sidecar, problem",
    [
        ("{", "Expecting property name"),
        ('"uint16"', "a JSON str, not an object"),
        ('{"dtype": "int8"}', "\"dtype\" is 'int8', not one of ('uint16', 'uint32')"),
        ('{"vocab_size": 0}', '"vocab_size" is 0, not a positive integer'),
        ('{"vocab_size": true}', '"vocab_size" is True, not a positive integer'),
        ('{"max_id": -1}', '"max_id" is -1, not an integer'),
    ],
)
def test_a_malformed_sidecar_is_one_message_naming_it(token_file, sidecar, problem):
    paxtrain.data.tokens.sidecar_path(token_file).write_text(sidecar)
    with pytest.raises(DataError) as error:
        TokenFile(token_file, vocab_size=VOCAB)
    assert str(error.value).startswith(f"Token sidecar {token_file}.json is malformed ({problem}")
    assert "paxtrain data tokenize ... --force" in str(error.value)
