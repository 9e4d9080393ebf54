"""Byte-level BPE through Hugging Face `tokenizers`: trained on local text, reserved special ids,
exact round trips over the standard library's source, any tokenizer.json loads, bad files are
one message."""

import pathlib
import sysconfig

import pytest

pytest.importorskip("tokenizers")

from paxtrain.data.bpe import BOS, EOS, BpeVocab, train_bpe  # noqa: E402
from paxtrain.data.text import STDLIB_FILES  # noqa: E402
from paxtrain.errors import DataError  # noqa: E402

STDLIB = pathlib.Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    files = [STDLIB / name for name in STDLIB_FILES if (STDLIB / name).is_file()]
    return train_bpe(files, 1024, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_the_trained_vocabulary_has_its_size_and_the_reserved_ids(vocab):
    assert len(vocab) == 1024
    assert (vocab.bos_id, vocab.eos_id) == (0, 1)
    assert vocab.decode([vocab.bos_id, vocab.eos_id]) == BOS + EOS
    assert vocab.identity["vocab_size"] == 1024 and len(vocab.identity["tokenizer_sha256"]) == 64


def test_every_file_of_the_standard_library_round_trips_exactly(vocab):
    files = sorted(STDLIB.glob("*.py"))
    assert len(files) > 100
    for path in files:
        text = path.read_text(encoding="utf-8")
        ids = vocab.encode(text)
        assert vocab.decode(ids) == text, path
        assert ids.max() < len(vocab)


def test_text_outside_the_training_data_round_trips_too(vocab):
    text = "Grüße, 世界! 🙂\r\n\ttabs\x00and nulls"
    assert vocab.decode(vocab.encode(text)) == text


def test_merges_compress_the_text_it_learned_from(vocab):
    text = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    assert len(vocab.encode(text)) < 0.5 * len(text.encode("utf-8"))


def test_any_local_tokenizer_json_loads(vocab, tmp_path):
    copy = tmp_path / "other.json"
    copy.write_bytes(vocab.path.read_bytes())
    other = BpeVocab(copy)
    assert other.encode("def f(): pass").tolist() == vocab.encode("def f(): pass").tolist()
    assert other.identity == vocab.identity  # the same bytes: the same identity


@pytest.mark.parametrize(
    "content, reason",
    [(None, "No such file"), (b"", "EOF"), (b"\x00\x01\xff", "utf-8"), (b'{"a": 1}', "")],
    ids=["missing", "empty", "binary", "other json"],
)
def test_a_bad_tokenizer_file_is_one_message_naming_it(tmp_path, content, reason):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path} is not a readable tokenizer.json .*{reason}"):
        BpeVocab(path)


def test_a_vocabulary_too_small_for_the_bytes_is_refused(tmp_path):
    with pytest.raises(DataError, match="--vocab-size is 100: a byte-level BPE has at least 258"):
        train_bpe([STDLIB / "textwrap.py"], 100, tmp_path / "t.json")


def test_training_on_a_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.txt does not exist"):
        train_bpe([tmp_path / "nope.txt"], 300, tmp_path / "t.json")


def test_special_tokens_in_text_are_not_special(vocab):
    """Text that happens to contain `<|eos|>` is encoded as its characters: only the data
    pipeline inserts the EOS id between documents."""
    ids = vocab.encode(f"a{EOS}b")
    assert vocab.eos_id not in ids.tolist()
    assert vocab.decode(ids) == f"a{EOS}b"


# ---------------------------------------------------------------- the command line, end to end
@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """A tokenizer trained by the command, and two documents tokenized with it."""
    from paxtrain.cli import main

    folder = tmp_path_factory.mktemp("bpe")
    docs = [folder / "a.txt", folder / "b.txt"]
    docs[0].write_text((STDLIB / "textwrap.py").read_text(encoding="utf-8"))
    docs[1].write_text((STDLIB / "shlex.py").read_text(encoding="utf-8"))
    tok = folder / "tok" / "tokenizer.json"
    argv = ["data", "tokenizer", "train", *map(str, docs), "--vocab-size", "512", "--out", str(tok)]
    assert main(argv) == 0
    assert main(["data", "tokenize", *map(str, docs), str(folder / "t.bin"), "--tokenizer", str(tok)]) == 0
    return folder, docs, tok


def test_documents_end_with_eos_and_the_sidecar_records_the_tokenizer(bpe_files):
    import json

    import numpy as np

    folder, docs, tok = bpe_files
    vocab = BpeVocab(tok)
    ids = np.fromfile(folder / "t.bin", dtype=np.uint16)
    first, second = (vocab.encode(d.read_text(encoding="utf-8")) for d in docs)
    expected = [*first.tolist(), vocab.eos_id, *second.tolist(), vocab.eos_id]
    assert ids.tolist() == expected
    meta = json.loads((folder / "t.bin.json").read_text())
    assert meta["vocab"] == "bpe" and meta["vocab_size"] == 512
    assert meta["tokenizer"]["tokenizer_sha256"] == vocab.identity["tokenizer_sha256"]
    assert meta["num_bytes"] == sum(len(d.read_bytes()) for d in docs)


def test_a_token_file_reads_with_its_tokenizer_and_knows_its_bytes_per_token(bpe_files):
    from paxtrain.data import TokenFile

    folder, docs, tok = bpe_files
    data = TokenFile(folder / "t.bin", seq_len=16, batch_size=2, tokenizer=tok)
    text = data.vocab.decode(data.train_batch(0)["inputs"][0])
    assert text in docs[0].read_text() + "<|eos|>" + docs[1].read_text()
    assert data.info["vocab_size"] == 512 and 1.5 < data.info["bytes_per_token"] < 8


def test_a_token_file_read_with_another_tokenizer_is_refused(bpe_files, tmp_path):
    from paxtrain.data import TokenFile

    folder, docs, _ = bpe_files
    other = train_bpe([docs[0]], 300, tmp_path / "other.json")
    with pytest.raises(DataError, match=r"t.bin was written with the tokenizer .* but `data.tokenizer` is .*other.json"):
        TokenFile(folder / "t.bin", seq_len=16, batch_size=2, tokenizer=other.path)


def test_a_bytes_token_file_read_with_a_tokenizer_is_refused(bpe_files, tmp_path):
    from paxtrain.cli import main
    from paxtrain.data import TokenFile

    folder, docs, tok = bpe_files
    assert main(["data", "tokenize", str(docs[0]), str(tmp_path / "b.bin")]) == 0
    with pytest.raises(DataError, match="holds bytes ids .* but `data.tokenizer` is"):
        TokenFile(tmp_path / "b.bin", seq_len=16, batch_size=2, tokenizer=tok)


def test_tokenizer_train_never_writes_over_a_file(bpe_files, capsys):
    from paxtrain.cli import main

    folder, docs, tok = bpe_files
    before = tok.read_bytes()
    argv = ["data", "tokenizer", "train", str(docs[0]), "--vocab-size", "300", "--out"]
    assert main([*argv, str(tok)]) == 2
    assert main([*argv, str(docs[0])]) == 2
    assert tok.read_bytes() == before and "is also an input" in capsys.readouterr().err
