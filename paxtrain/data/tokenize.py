"""`paxtrain data tokenize`: text files (or the text column of `.jsonl`/`.parquet` files) -> a
flat token file that `TokenFile` reads.

The text is read and written a chunk at a time, so memory stays flat whatever its size. Nothing
the user owns is written over: an input never, an existing file only with `force=True`; the new
file appears only once complete and checked.
"""

from __future__ import annotations

import codecs
import collections
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from paxtrain.data.bpe import BpeVocab
from paxtrain.data.documents import DEFAULT_COLUMN, is_table, read_documents
from paxtrain.data.text import VOCABS, CharVocab
from paxtrain.data.tokens import sidecar_path
from paxtrain.errors import DataError

CHUNK_BYTES = 1 << 22  # 4 MiB per read
SNIFF_BYTES = 1024  # a NUL among the first bytes marks a binary file (UTF-16 text too)
# `--vocab chars` maps every other character to one unknown id: above this share of the text,
# the file is refused (a model of mostly-unknown ids learns nothing useful).
MAX_UNKNOWN_FRACTION = 0.01
SHOWN_UNKNOWN = 5  # the most frequent unknown characters a report names

MISSING_TEXT_MSG = """\
Text file not found: {path}
Give one or more UTF-8 text files: `paxtrain data tokenize book.txt book.bin --vocab bytes`."""

TEXT_IS_DIRECTORY_MSG = """\
Input {path} is a directory: give the text files in it, e.g. `paxtrain data tokenize \
{path}/*.txt out.bin`."""

EMPTY_TEXT_MSG = """\
{paths} hold no text: there is nothing to tokenize. Give non-empty UTF-8 text files."""

BINARY_TEXT_MSG = """\
{path} is not UTF-8 text ({reason}): tokenizing it would train on noise. Give UTF-8 text files \
(convert others first, e.g. `iconv -f latin1 -t utf-8`)."""

BAD_VOCAB_MSG = """\
Unknown vocabulary {vocab!r}; choose one of {vocabs} (`--vocab bytes`: UTF-8 bytes, 256 ids; \
`--vocab chars`: printable ASCII, 98 ids, the char recipes' vocabulary)."""

OUT_IS_INPUT_MSG = """\
OUT {out} is also an input: tokenizing would destroy it. The last argument is the token file to \
write: `paxtrain data tokenize {example} {suggestion}`."""

OUT_EXISTS_MSG = """\
{out} exists, and `paxtrain data tokenize` does not write over a file: the last argument is the \
token file to write (was it forgotten? `paxtrain data tokenize {example} {suggestion}`); add \
`--force` to replace {out}."""

OUT_IS_DIRECTORY_MSG = """\
OUT {out} is a directory: give the token file to write, e.g. `{suggestion}`."""

COLUMN_WITHOUT_TABLE_MSG = """\
--column {column!r} names a column of .jsonl/.parquet inputs, and none is given ({paths} are \
read as text): drop `--column`, or give the table files."""

TOO_MANY_UNKNOWN_MSG = """\
{unknown} of the {total} characters ({share:.1%}) are outside `--vocab chars` (printable ASCII, \
newline, tab), e.g. {examples}; above {limit:.1%} the file is refused, since they all become one \
unknown id. Use `--vocab bytes` (any UTF-8 text), or accept them with `--max-unknown {needed}`."""


def check_targets(
    inputs: Sequence[pathlib.Path], out: pathlib.Path, force: bool = False
) -> list[pathlib.Path]:
    """The files tokenizing into `out` writes (`out` and its sidecar), after checking that none
    is an input, a directory, or (without `force`) an existing file.

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.txt").write_text("hello")
        >>> [p.name for p in check_targets([folder / "a.txt"], folder / "a.bin")]
        ['a.bin', 'a.bin.json']
        >>> check_targets([folder / "a.txt"], folder / "a.txt", force=True)
        Traceback (most recent call last):
        ...
        paxtrain.errors.DataError: OUT ... is also an input: ...
    """
    example = " ".join(str(p) for p in inputs[:2]) + (" ..." if len(inputs) > 2 else "")
    suggestion = out.with_suffix(".bin") if out.suffix != ".bin" else out.with_name("tokens.bin")
    if out.is_dir():
        raise DataError(OUT_IS_DIRECTORY_MSG.format(out=out, suggestion=out / "tokens.bin"))
    targets = [out, sidecar_path(out)]
    for target in targets:
        if any(_same_file(target, path) for path in inputs):
            raise DataError(
                OUT_IS_INPUT_MSG.format(out=target, example=example, suggestion=suggestion)
            )
        if target.is_dir():
            raise DataError(OUT_IS_DIRECTORY_MSG.format(out=target, suggestion=suggestion))
        if target.exists() and not force:
            raise DataError(
                OUT_EXISTS_MSG.format(out=target, example=example, suggestion=suggestion)
            )
    return targets


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # links and hard links too
    return a.resolve() == b.resolve()


def _check_text(path: pathlib.Path) -> None:
    """Refuses a missing input, a directory, or a file whose first KiB is not UTF-8 text (a
    Parquet file's bytes are not text: pyarrow checks it when it is read)."""
    if path.is_dir():
        raise DataError(TEXT_IS_DIRECTORY_MSG.format(path=path))
    if not path.is_file():
        raise FileNotFoundError(MISSING_TEXT_MSG.format(path=path))
    if path.suffix.lower() == ".parquet":
        return
    with path.open("rb") as source:
        head = source.read(SNIFF_BYTES)
    if b"\x00" in head:
        reason = "a NUL byte at byte {}".format(head.index(b"\x00"))
        raise DataError(BINARY_TEXT_MSG.format(path=path, reason=reason))
    try:  # a character cut at the end of the sniffed bytes is fine
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as error:
        raise DataError(BINARY_TEXT_MSG.format(path=path, reason=_reason(error, 0))) from None


def _reason(error: UnicodeDecodeError, offset: int) -> str:
    bad = error.object[error.start : error.start + 1]
    return f"byte {offset + error.start} is {bad!r}, invalid in UTF-8"


def _read_text(path: pathlib.Path):
    """The text of a file, a chunk at a time, decoded strictly (binary -> `DataError`)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes read before the current chunk (the decoder holds back at most 3)
    with path.open("rb") as source:
        while True:
            chunk = source.read(CHUNK_BYTES)
            held = len(decoder.getstate()[0])  # the error's position counts these first
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                reason = _reason(error, offset - held)
                raise DataError(BINARY_TEXT_MSG.format(path=path, reason=reason)) from None
            if text:
                yield text
            if not chunk:
                return
            offset += len(chunk)


def tokenize_files(
    inputs: Sequence[str | pathlib.Path],
    out: str | pathlib.Path,
    vocab: str = "bytes",
    force: bool = False,
    max_unknown: float = MAX_UNKNOWN_FRACTION,
    tokenizer: str | pathlib.Path | None = None,
    column: str | None = None,
) -> dict[str, object]:
    """Encodes text files, one after the other, into the token file `out` (uint16, or uint32
    for a tokenizer of more than 65536 ids). A `.jsonl` or `.parquet` input is a table: each
    row's `column` is a document of its own.

    Also writes the sidecar `out + ".json"` (dtype, vocabulary, size, largest id and, for
    "chars", the count of unknown characters) that `TokenFile` reads. `out` appears only once
    complete, so an interrupted run leaves no half file behind.

    Args:
      inputs: UTF-8 text files (a file that is not UTF-8, binary or another encoding, is
        refused), and `.jsonl`/`.parquet` tables (`paxtrain.data.documents`).
      out: the token file to write; never an input, and an existing file only with `force`.
      vocab: "bytes" (UTF-8 bytes) or "chars" (`CharVocab`).
      force: replace an existing `out` (and its sidecar).
      max_unknown: with "chars", the largest share of characters outside the vocabulary that
        is accepted (they all become one unknown id).
      tokenizer: a `tokenizer.json` (`paxtrain data tokenizer train`) to encode with instead of
        `vocab`; each input is a document, followed by the tokenizer's `<|eos|>` id, and the
        sidecar records the tokenizer's identity, so the file is read with that one only.
        Each row of a table is a document too.
      column: the text column of the tables (default "text"); only with table inputs.

    Returns:
      The sidecar's contents, plus "unknown_examples" (the most frequent unknown characters
      and their counts) for "chars".

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.txt").write_text("hello")
        >>> meta = tokenize_files([folder / "a.txt"], folder / "a.bin")
        >>> meta["num_tokens"], meta["max_id"]
        (5, 111)
        >>> np.fromfile(folder / "a.bin", dtype=np.uint16).tolist()
        [104, 101, 108, 108, 111]
    """
    if vocab not in VOCABS:
        raise DataError(BAD_VOCAB_MSG.format(vocab=vocab, vocabs=tuple(VOCABS)))
    encoder = VOCABS[vocab]() if tokenizer is None else BpeVocab(tokenizer)
    paths = [pathlib.Path(p).expanduser() for p in inputs]
    for path in paths:
        _check_text(path)
    if column is not None and not any(map(is_table, paths)):
        names = ", ".join(map(str, paths))
        raise DataError(COLUMN_WITHOUT_TABLE_MSG.format(column=column, paths=names))
    out = pathlib.Path(out).expanduser()
    targets = check_targets(paths, out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name beside `out`: no file of the user's is touched until the final rename.
    handle, partial_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    partial = pathlib.Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as sink:
            documents = _documents(paths, column or DEFAULT_COLUMN)
            count, max_id, num_bytes, dtype, unknown = _write_ids(documents, encoder, sink)
        if count == 0:
            raise DataError(EMPTY_TEXT_MSG.format(paths=", ".join(map(str, paths))))
        total_unknown = sum(unknown.values())
        if total_unknown > max_unknown * count:
            raise DataError(
                TOO_MANY_UNKNOWN_MSG.format(
                    unknown=total_unknown,
                    total=count,
                    share=total_unknown / count,
                    examples=_format_unknown(unknown),
                    limit=max_unknown,
                    needed=f"{np.ceil(1000 * total_unknown / count) / 1000:g}",
                )
            )
        meta: dict[str, object] = {
            "dtype": dtype.name,
            "vocab": vocab if tokenizer is None else "bpe",
            "vocab_size": len(encoder),
            "num_tokens": count,
            "max_id": max_id,
            "num_bytes": num_bytes,  # bits per byte = bits per token * tokens / bytes
        }
        if tokenizer is not None:
            meta["tokenizer"] = {**encoder.identity, "path": str(pathlib.Path(tokenizer).resolve())}
        if isinstance(encoder, CharVocab):
            meta["unknown_chars"] = total_unknown
        os.replace(partial, targets[0])
    finally:
        partial.unlink(missing_ok=True)
    targets[1].write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "unknown_examples": unknown.most_common(SHOWN_UNKNOWN)} if unknown else meta


def _documents(paths: Sequence[pathlib.Path], column: str) -> Iterator[Iterable[str]]:
    """Each document of the inputs, as chunks of its text: a text file is one document, read
    a chunk at a time; a table's rows are one document each."""
    for path in paths:
        if is_table(path):
            yield from ((text,) for text in read_documents(path, column))
        else:
            yield _read_text(path)


def _write_ids(
    documents: Iterable[Iterable[str]], encoder: Any, sink: Any
) -> tuple[int, int, int, np.dtype, collections.Counter[str]]:
    """Encodes each document into `sink`, each followed by the encoder's EOS id if it has one;
    returns the count of ids, the largest, the bytes of text (UTF-8), the dtype and the
    characters `CharVocab` did not know."""
    dtype = np.dtype(np.uint16 if len(encoder) <= 1 << 16 else np.uint32)
    unknown_id = len(encoder) - 1 if isinstance(encoder, CharVocab) else None
    # A document ends with `<|eos|>`, so a model sees where one text stops and another starts.
    end = [] if getattr(encoder, "eos_id", None) is None else [encoder.eos_id]
    unknown: collections.Counter[str] = collections.Counter()
    count, max_id, num_bytes = 0, 0, 0
    for document in documents:
        for text in document:
            num_bytes += len(text.encode("utf-8"))  # a table's file size is not its text's
            ids = encoder.encode(text)
            if unknown_id is not None:
                codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
                found, counts = np.unique(codes[ids == unknown_id], return_counts=True)
                unknown.update(dict(zip(map(chr, found.tolist()), counts.tolist())))
            sink.write(ids.astype(dtype).tobytes())
            count += len(ids)
            max_id = max(max_id, int(ids.max(initial=0)))
        sink.write(np.asarray(end, dtype).tobytes())
        count += len(end)
        max_id = max([max_id, *end])
    return count, max_id, num_bytes, dtype, unknown


def _format_unknown(unknown: collections.Counter[str]) -> str:
    return ", ".join(f"{c!r} x{n}" for c, n in unknown.most_common(SHOWN_UNKNOWN))


def describe_unknown(meta: dict[str, object]) -> str:
    """A line on the characters `--vocab chars` did not know, or "" when there were none.

    Example:
        >>> describe_unknown({"unknown_chars": 3, "num_tokens": 300,
        ...                   "unknown_examples": [("é", 2), ("ü", 1)]})
        "3 characters (1.0%) outside the vocabulary became the unknown id: 'é' x2, 'ü' x1"
    """
    count = int(meta.get("unknown_chars", 0))
    if not count:
        return ""
    share = count / int(meta["num_tokens"])
    examples = _format_unknown(collections.Counter(dict(meta["unknown_examples"])))
    return (
        f"{count} characters ({share:.1%}) outside the vocabulary became the unknown id: {examples}"
    )
