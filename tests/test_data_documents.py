"""Tables of documents for `paxtrain data tokenize`: each row of a `.jsonl` or `.parquet` text
column is a document, written exactly as the same text in a file of its own would be (EOS after
each, with a tokenizer); rows without text in the column are one message naming file and row."""

import json
import sys

import numpy as np
import pytest

from paxtrain.cli.app import main
from paxtrain.data.documents import read_documents
from paxtrain.data.tokenize import tokenize_files
from paxtrain.errors import DataError

DOCUMENTS = ["def f(x):\n    return x\n", "Grüße, 世界! 🙂", "", "class A:\n    pass\n"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    pytest.importorskip("tokenizers")
    from paxtrain.data.bpe import train_bpe

    root = tmp_path_factory.mktemp("tok")
    (root / "train.txt").write_text("".join(DOCUMENTS) * 20, encoding="utf-8")
    return train_bpe([root / "train.txt"], 300, root / "tokenizer.json").path


def _as_text_files(folder, documents):
    paths = [folder / f"doc{i}.txt" for i in range(len(documents))]
    for path, text in zip(paths, documents):
        path.write_text(text, encoding="utf-8")
    return paths


def _tokens(out):
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    return np.fromfile(out, dtype=meta["dtype"]).tolist(), meta


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_parquet(path, columns):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=3)  # rows span row groups
    return path


def _reference(tmp_path, tokenizer, documents):
    """The token file of the documents as text files of their own, one after the other."""
    (tmp_path / "ref").mkdir()
    out = tmp_path / "ref" / "ref.bin"
    options = {"tokenizer": tokenizer} if tokenizer else {}
    tokenize_files(_as_text_files(tmp_path / "ref", documents), out, **options)
    return _tokens(out)


@pytest.mark.parametrize("with_tokenizer", [True, False], ids=["bpe", "bytes"])
def test_each_jsonl_row_is_a_document_as_a_text_file_would_be(tmp_path, tokenizer, with_tokenizer):
    tok = tokenizer if with_tokenizer else None
    rows = [{"id": i, "body": text, "text": "not this column"} for i, text in enumerate(DOCUMENTS)]
    table = _write_jsonl(tmp_path / "docs.jsonl", rows[:2])
    (tmp_path / "more.jsonl").write_text("\n" + json.dumps(rows[2]) + "\n\n" + json.dumps(rows[3]))
    out = tmp_path / "docs.bin"
    options = {"tokenizer": tok} if tok else {}
    tokenize_files([table, tmp_path / "more.jsonl"], out, column="body", **options)
    ids, meta = _tokens(out)
    expected_ids, expected_meta = _reference(tmp_path, tok, DOCUMENTS)
    assert ids == expected_ids
    assert meta["num_bytes"] == sum(len(t.encode("utf-8")) for t in DOCUMENTS)
    assert {k: v for k, v in meta.items() if k != "tokenizer"} == {
        k: v for k, v in expected_meta.items() if k != "tokenizer"
    }
    if tok:  # an EOS after every row, the empty one too
        eos = json.loads(tokenizer.read_text())["added_tokens"][1]["id"]
        assert ids.count(eos) == len(DOCUMENTS) and ids[-1] == eos


def test_each_parquet_row_is_a_document_as_a_text_file_would_be(tmp_path, tokenizer):
    documents = DOCUMENTS * 2  # 8 rows in row groups of 3
    table = _write_parquet(tmp_path / "docs.parquet", {"text": documents, "n": range(8)})
    tokenize_files([table], tmp_path / "docs.bin", tokenizer=tokenizer)
    ids, meta = _tokens(tmp_path / "docs.bin")
    expected_ids, _ = _reference(tmp_path, tokenizer, documents)
    assert ids == expected_ids and meta["num_bytes"] == sum(len(t.encode()) for t in documents)


def test_tables_and_text_files_mix_in_order(tmp_path, tokenizer):
    table = _write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in DOCUMENTS[:2]])
    text = _as_text_files(tmp_path, DOCUMENTS[2:])
    main(["data", "tokenize", str(table), *map(str, text), str(tmp_path / "mix.bin"),
          "--tokenizer", str(tokenizer)])  # fmt: skip
    assert _tokens(tmp_path / "mix.bin")[0] == _reference(tmp_path, tokenizer, DOCUMENTS)[0]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "a"}, {"body": "b", "id": 2}], r"docs.jsonl:2 has no column 'text'; its columns are \['body', 'id'\]"),
        ([{"text": "a"}, {"text": None}], r"docs.jsonl:2: column 'text' holds null, not text"),
        ([{"text": ["a", "b"]}], r"docs.jsonl:1: column 'text' holds \['a', 'b'\] \(list\), not text"),
        ([{"text": "a"}, ["text"]], r"docs.jsonl:2 is not a JSON object \(a JSON list\)"),
    ],
    ids=["missing column", "null", "list", "not an object"],
)  # fmt: skip
def test_a_jsonl_row_without_text_is_refused_naming_file_and_line(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "docs.jsonl", rows)
    with pytest.raises(DataError, match=message):
        list(read_documents(path))


def test_a_jsonl_line_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"docs.jsonl:2 is not a JSON object \(byte 13 of the"):
        list(read_documents(path))


@pytest.mark.parametrize(
    "columns, column, message",
    [
        ({"body": ["a"], "id": [1]}, "text", r"docs.parquet has no column 'text'; its columns are \['body', 'id'\]"),
        ({"text": [1, 2]}, "text", r"docs.parquet: column 'text' holds int64 values, not text"),
        ({"text": ["a", None, "c"]}, "text", r"docs.parquet, row 1: column 'text' holds null"),
    ],
    ids=["missing column", "integers", "null"],
)  # fmt: skip
def test_a_parquet_column_without_text_is_refused(tmp_path, columns, column, message):
    path = _write_parquet(tmp_path / "docs.parquet", columns)
    with pytest.raises(DataError, match=message):
        list(read_documents(path, column))


def test_a_file_that_is_not_parquet_is_one_message(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "docs.parquet"
    path.write_text("text\nnot parquet\n")
    with pytest.raises(DataError, match="docs.parquet is not a readable Parquet file"):
        list(read_documents(path))


def test_a_parquet_file_damaged_inside_is_one_line_naming_the_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    rows = [f"document {i}" for i in range(5000)]
    pq.write_table(pa.table({"text": rows}), path, row_group_size=1000, compression="none")
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 2] = b"\xab" * (len(data) // 2 - len(data) // 3)
    path.write_bytes(bytes(data))  # the footer (at the end) is intact: the file opens
    with pytest.raises(
        DataError, match=r"docs.parquet is not a readable Parquet file \(row \d+: "
    ) as error:
        list(read_documents(path))
    assert "\n" not in str(error.value)


def test_parquet_without_pyarrow_names_the_extra(tmp_path, capsys, monkeypatch):
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    code = main(["data", "tokenize", str(path), str(tmp_path / "out.bin")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("paxtrain: ") and err.count("\n") == 1, err
    assert (
        "docs.parquet (Parquet) needs pyarrow" in err and "pip install 'paxtrain[tokenizer]'" in err
    )
    assert not (tmp_path / "out.bin").exists()
