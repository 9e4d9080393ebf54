"""Byte-level BPE vocabularies through Hugging Face `tokenizers` (`pip install -e ".[tokenizer]"`).

`train_bpe` learns one from local text files and writes a standard `tokenizer.json`; `BpeVocab`
reads that file, or any other local `tokenizer.json`, and has the interface of the recipes'
vocabularies (`encode`, `decode`, `len`). Byte-level means no text is unknown: every string
encodes, and decodes back to itself.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("def f(x):\\n    return x + 1\\n" * 50)
    >>> vocab = train_bpe([folder / "a.txt"], vocab_size=300, out=folder / "tokenizer.json")
    >>> vocab.decode(vocab.encode("def g(y): return y")) == "def g(y): return y"
    True
    >>> vocab.eos_id, vocab.bos_id
    (1, 0)
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from paxtrain.errors import DataError

BOS, EOS = "<|bos|>", "<|eos|>"
# 256 byte symbols and the two reserved ids come first; merges fill the rest.
MIN_VOCAB_SIZE = 258

NO_TOKENIZERS_MSG = (
    'BPE vocabularies need Hugging Face\'s `tokenizers`: `pip install -e ".[tokenizer]"` (or '
    "`pip install tokenizers`), or use `--vocab bytes` / `--vocab chars`, which need nothing."
)
VOCAB_SIZE_MSG = (
    "--vocab-size is {size}: a byte-level BPE has at least {minimum} ids (256 bytes and "
    "{bos}/{eos}); choose more, e.g. `--vocab-size 4096`."
)
OUT_EXISTS_MSG = (
    "{out} exists: `paxtrain data tokenizer train` does not write over a file; add `--force` to "
    "replace it, or choose another `--out`."
)
OUT_IS_INPUT_MSG = "--out {out} is also an input: training would destroy it; choose another --out."
NO_TEXT_MSG = "{path} does not exist or is not a file: give text files to train the tokenizer on."
NOT_A_TOKENIZER_MSG = (
    "{path} is not a readable tokenizer.json ({reason}): give a file written by `paxtrain data "
    "tokenizer train` or by Hugging Face `tokenizers`."
)


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as error:
        raise DataError(NO_TOKENIZERS_MSG) from error
    return tokenizers


class BpeVocab:
    """A `tokenizer.json` as a vocabulary: `encode(text) -> ids`, `decode(ids) -> text`.

    Args:
      path: the `tokenizer.json` file.

    Attributes:
      bos_id, eos_id: the ids of `<|bos|>` / `<|eos|>`, or None if the tokenizer lacks them.
      identity: what a token file records to be read with this tokenizer only: the SHA-256 of
        the file, the vocabulary size and the special ids.
    """

    def __init__(self, path: str | pathlib.Path):
        tokenizers = _tokenizers()
        self.path = pathlib.Path(path)
        try:
            data = self.path.read_bytes()
            self.tokenizer = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        # tokenizers reports a malformed file as a bare Exception.
        except Exception as error:
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
            raise DataError(NOT_A_TOKENIZER_MSG.format(path=path, reason=reason)) from None
        # Text that contains `<|eos|>` is text: only the data pipeline puts the EOS id between
        # documents, so a document cannot end itself early by quoting it.
        self.tokenizer.encode_special_tokens = True
        self.bos_id = self.tokenizer.token_to_id(BOS)
        self.eos_id = self.tokenizer.token_to_id(EOS)
        self.identity = {
            "tokenizer_sha256": hashlib.sha256(data).hexdigest(),
            "vocab_size": len(self),
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Any) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def train_bpe(
    files: Sequence[str | pathlib.Path],
    vocab_size: int,
    out: str | pathlib.Path,
    force: bool = False,
) -> BpeVocab:
    """Learns a byte-level BPE of `vocab_size` ids on `files` (UTF-8 text), with `<|bos|>` = 0
    and `<|eos|>` = 1, and writes it to `out` (a `tokenizer.json`, never an input, an existing
    file only with `force`); returns it loaded.

    Example:
        >>> vocab = train_bpe(["book.txt"], 4096, "runs/tok/tokenizer.json")  # doctest: +SKIP
    """
    tokenizers = _tokenizers()
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(VOCAB_SIZE_MSG.format(size=vocab_size, minimum=MIN_VOCAB_SIZE, bos=BOS,
                                              eos=EOS))  # fmt: skip
    out = pathlib.Path(out)
    for path in files:
        if not pathlib.Path(path).is_file():
            raise DataError(NO_TEXT_MSG.format(path=path))
        if out.exists() and out.resolve() == pathlib.Path(path).resolve():
            raise DataError(OUT_IS_INPUT_MSG.format(out=out))
    if out.exists() and not force:
        raise DataError(OUT_EXISTS_MSG.format(out=out))
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(f) for f in files], trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return BpeVocab(out)


def describe(vocab: BpeVocab) -> str:
    """One line about a tokenizer, for the command line.

    Example:
        >>> describe(vocab)  # doctest: +SKIP
        'runs/tok/tokenizer.json: 4096 ids, <|bos|>=0, <|eos|>=1, sha256 3f2a...'
    """
    return (
        f"{vocab.path}: {len(vocab)} ids, {BOS}={vocab.bos_id}, {EOS}={vocab.eos_id}, "
        f"sha256 {vocab.identity['tokenizer_sha256'][:12]}"
    )
