"""`paxtrain data tokenize`: text files -> a flat token file that `TokenFile` reads.

The text is read and written a chunk at a time, so memory stays flat whatever its size.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from paxtrain.data.text import VOCABS
from paxtrain.data.tokens import sidecar_path
from paxtrain.errors import DataError

CHUNK_CHARS = 1 << 22  # 4M characters per read

MISSING_TEXT_MSG = """\
Text file not found: {path}
Give one or more UTF-8 text files: `paxtrain data tokenize book.txt book.bin --vocab bytes`."""

EMPTY_TEXT_MSG = """\
{paths} hold no text: there is nothing to tokenize. Give non-empty UTF-8 text files."""

BAD_VOCAB_MSG = """\
Unknown vocabulary {vocab!r}; choose one of {vocabs} (`--vocab bytes`: UTF-8 bytes, 256 ids; \
`--vocab chars`: printable ASCII, 98 ids, the char recipes' vocabulary)."""


def tokenize_files(
    inputs: Sequence[str | pathlib.Path], out: str | pathlib.Path, vocab: str = "bytes"
) -> dict[str, object]:
    """Encodes text files, one after the other, into the uint16 token file `out`.

    Also writes the sidecar `out + ".json"` (dtype, vocabulary, size) that `TokenFile` reads.
    `out` appears only once complete, so an interrupted run leaves no half file behind.

    Args:
      inputs: UTF-8 text files (undecodable bytes become the replacement character).
      out: the token file to write.
      vocab: "bytes" (UTF-8 bytes) or "chars" (`CharVocab`).

    Returns:
      The sidecar's contents.

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.txt").write_text("hello")
        >>> tokenize_files([folder / "a.txt"], folder / "a.bin")["num_tokens"]
        5
        >>> np.fromfile(folder / "a.bin", dtype=np.uint16).tolist()
        [104, 101, 108, 108, 111]
    """
    if vocab not in VOCABS:
        raise DataError(BAD_VOCAB_MSG.format(vocab=vocab, vocabs=tuple(VOCABS)))
    paths = [pathlib.Path(p).expanduser() for p in inputs]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(MISSING_TEXT_MSG.format(path=path))
    encoder = VOCABS[vocab]()
    out = pathlib.Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    count = 0
    try:
        with partial.open("wb") as sink:
            for path in paths:
                with path.open(encoding="utf-8", errors="replace", newline="") as source:
                    while chunk := source.read(CHUNK_CHARS):
                        ids = encoder.encode(chunk).astype(np.uint16)
                        sink.write(ids.tobytes())
                        count += len(ids)
        if count == 0:
            raise DataError(EMPTY_TEXT_MSG.format(paths=", ".join(map(str, paths))))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    meta = {"dtype": "uint16", "vocab": vocab, "vocab_size": len(encoder), "num_tokens": count}
    sidecar_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
