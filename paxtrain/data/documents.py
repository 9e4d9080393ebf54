"""Documents of a table file: the text column of each row of a `.jsonl` or `.parquet` file.

`paxtrain data tokenize` reads them as it reads text files, one document per row. JSONL needs
only the standard library; Parquet needs pyarrow (the `tokenizer` extra), imported only when a
Parquet file is read. A row that has no text in the column is refused, never skipped.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

from paxtrain.errors import DataError

TABLE_SUFFIXES = (".jsonl", ".parquet")
DEFAULT_COLUMN = "text"
BATCH_ROWS = 1024  # Parquet rows read at a time: memory stays flat whatever the file's size

MISSING_COLUMN_MSG = """\
{where} has no column {column!r}; its columns are {columns}. Name the text column with \
`--column NAME`."""

NOT_TEXT_MSG = """\
{where}: column {column!r} holds {kind}, not text. Give the column of the documents' text with \
`--column NAME`."""

MALFORMED_JSONL_MSG = """\
{path}:{line} is not a JSON object ({reason}): a .jsonl file holds one JSON object per line, \
e.g. {{"text": "..."}}. Fix or remove that line."""

NO_PYARROW_MSG = """\
Reading {path} (Parquet) needs pyarrow, which does not import here ({reason}): `pip install \
'paxtrain[tokenizer]'` (pyarrow 16 or later), or convert the file to .jsonl."""

NOT_PARQUET_MSG = """\
{path} is not a readable Parquet file ({reason}). Give a Parquet file, or the text as .txt or \
.jsonl."""


def is_table(path: pathlib.Path) -> bool:
    """Whether `path` is read as a table of documents (by its suffix) rather than as text.

    Example:
        >>> is_table(pathlib.Path("train.jsonl")), is_table(pathlib.Path("book.txt"))
        (True, False)
    """
    return path.suffix.lower() in TABLE_SUFFIXES


def read_documents(path: pathlib.Path, column: str = DEFAULT_COLUMN) -> Iterator[str]:
    """The text in `column` of each row of the table file `path`, in order.

    Args:
      path: a `.jsonl` file (one JSON object per line; blank lines are skipped) or a
        `.parquet` file (needs pyarrow).
      column: the column that holds each document's text; every row must have a string there.

    Raises:
      DataError: a missing column (naming the columns there are), a value that is not a
        string, a malformed JSONL line (file:line), an unreadable Parquet file, or no pyarrow.

    Example:
        >>> import tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "docs.jsonl"
        >>> _ = path.write_text('{"text": "one", "id": 1}\\n{"text": "two", "id": 2}\\n')
        >>> list(read_documents(path))
        ['one', 'two']
        >>> list(read_documents(path, "body"))
        Traceback (most recent call last):
        ...
        paxtrain.errors.DataError: ...docs.jsonl:1 has no column 'body'; its columns are ['id', 'text']...
    """
    if path.suffix.lower() == ".parquet":
        return _parquet_documents(path, column)
    return _jsonl_documents(path, column)


def _text(value: object, where: str, column: str) -> str:
    if not isinstance(value, str):
        kind = "null" if value is None else f"{value!r:.40} ({type(value).__name__})"
        raise DataError(NOT_TEXT_MSG.format(where=where, column=column, kind=kind))
    return value


def _jsonl_documents(path: pathlib.Path, column: str) -> Iterator[str]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                row, reason = None, f"byte {error.start} of the line is not UTF-8"
            except json.JSONDecodeError as error:
                row, reason = None, f"{error.msg.removesuffix(' at')} at column {error.colno}"
            else:
                reason = None if isinstance(row, dict) else f"a JSON {type(row).__name__}"
            if reason is not None:
                raise DataError(MALFORMED_JSONL_MSG.format(path=path, line=number, reason=reason))
            if column not in row:
                raise DataError(
                    MISSING_COLUMN_MSG.format(where=where, column=column, columns=sorted(row))
                )
            yield _text(row[column], where, column)


def _parquet_documents(path: pathlib.Path, column: str) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(NO_PYARROW_MSG.format(path=path, reason=error)) from None
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        reason = str(error).strip().splitlines()[0]
        raise DataError(NOT_PARQUET_MSG.format(path=path, reason=reason)) from None
    schema = table.schema_arrow
    if column not in schema.names:
        raise DataError(MISSING_COLUMN_MSG.format(where=path, column=column, columns=schema.names))
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(NOT_TEXT_MSG.format(where=path, column=column, kind=f"{kind} values"))
    row = 0
    try:
        for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
            for value in batch.column(0).to_pylist():
                yield _text(value, f"{path}, row {row}", column)
                row += 1
    except (pa.ArrowException, OSError) as error:  # a row group damaged after a sound footer
        reason = f"row {row}: {str(error).strip().splitlines()[0]}"
        raise DataError(NOT_PARQUET_MSG.format(path=path, reason=reason)) from None
