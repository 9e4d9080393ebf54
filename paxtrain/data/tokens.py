"""Language-model data from a flat binary file of token ids, read through `np.memmap`.

The layout nanoGPT's `train.bin` / `val.bin` and Levanter's flat caches use: token ids one after
another, `uint16` (vocabularies up to 65536) or `uint32`, native byte order, no header. Nothing
is read into memory but the windows of each batch, and the file is mapped afresh for each batch
(as nanoGPT's loader does), so the pages a batch touched leave the process with it: its memory
stays flat however large the file and however long the run.
`paxtrain data tokenize` writes such a file from text, with a `.json` sidecar that records its
dtype and vocabulary (`tokenize.py`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from paxtrain.data.bpe import BpeVocab
from paxtrain.data.text import VOCABS
from paxtrain.errors import ArgumentError, DataError

DTYPES = ("uint16", "uint32")
SIDECAR_SUFFIX = ".json"
# Ids checked against the vocabulary when no sidecar records the largest: every id of a file up
# to FULL_CHECK_IDS (0.2 s per 32M ids read from the page cache), else a fixed sample: the
# first ids and evenly spaced blocks.
FULL_CHECK_IDS, FULL_CHECK_CHUNK = 1 << 27, 1 << 22
CHECK_BLOCKS, CHECK_BLOCK_SIZE = 64, 16_384

MISSING_TOKENS_MSG = """\
Token file not found: {path}
Check `data.path`, or write one from text: `paxtrain data tokenize INPUT.txt {path} --vocab bytes`."""

EMPTY_TOKENS_MSG = """\
Token file {path} is empty. Write it again: `paxtrain data tokenize INPUT.txt {path} --vocab bytes`."""

BAD_DTYPE_MSG = """\
dtype={dtype!r} is not a token file dtype; use one of {dtypes} (`data.dtype=uint16`)."""

NOT_A_MULTIPLE_MSG = """\
Token file {path} has {size} bytes, not a multiple of {itemsize} ({dtype}): it is truncated or \
holds another dtype. Set `data.dtype` to the dtype it was written with ({dtypes}), or write it \
again."""

NO_VOCAB_SIZE_MSG = """\
Token file {path} has no sidecar {sidecar} naming its vocabulary, so the model's vocabulary size \
is unknown: set `+data.vocab_size=N` (e.g. 50257 for GPT-2's tokenizer), or write the file with \
`paxtrain data tokenize`."""

ID_OUT_OF_VOCAB_MSG = """\
Token file {path} holds id {token} at position {position}, but vocab_size={vocab_size}: the file \
was written with another vocabulary or dtype. Set `data.vocab_size` to at least {needed}, \
`data.dtype` to the file's dtype, or write the file again."""

MAX_ID_MSG = """\
Token file {path} holds ids up to {max_id} (recorded in {sidecar}), but vocab_size={vocab_size}: \
every step with a larger id would be skipped. Set `data.vocab_size` to at least {needed}, or \
tokenize the text again with the vocabulary you mean."""

MALFORMED_SIDECAR_MSG = """\
Token sidecar {sidecar} is malformed ({problem}); it must be the JSON object `paxtrain data \
tokenize` writes, e.g. {{"dtype": "uint16", "vocab": "bytes", "vocab_size": 256, "num_tokens": \
1000, "max_id": 255}}. Write the token file again with `paxtrain data tokenize ... --force`, or \
delete the sidecar and set `data.vocab_size` and `data.dtype`."""

STALE_SIDECAR_MSG = """\
Token file {path} holds {count} {dtype} ids, but its sidecar {sidecar} describes {recorded}: the \
file changed after the sidecar was written (or `data.dtype` differs from the sidecar's). Write it \
again with `paxtrain data tokenize ... --force`, or delete the sidecar."""

EVAL_FRACTION_MSG = """\
eval_fraction={eval_fraction} must be a share between 0 and 1 (exclusive) of the tokens held \
out for evaluation, e.g. `data.eval_fraction=0.1`."""

OTHER_TOKENIZER_MSG = """\
Token file {path} was written with the tokenizer {recorded} (sha256 {recorded_hash}), but \
`data.tokenizer` is {given} (sha256 {given_hash}): its ids would mean other text. Give the \
tokenizer it was written with, or tokenize the text again with this one."""

NOT_BPE_MSG = """\
Token file {path} holds {vocab} ids (its sidecar records no tokenizer), but `data.tokenizer` is \
{given}: read it without `data.tokenizer`, or tokenize the text again with that tokenizer \
(`paxtrain data tokenize ... --tokenizer {given}`)."""

TOO_SHORT_TOKENS_MSG = """\
{what} holds {n} tokens, too few for windows of seq_len+1={window} tokens. Use more text or a \
smaller `data.seq_len`."""


def sidecar_path(path: str | pathlib.Path) -> pathlib.Path:
    """Where the metadata of a token file lives: the file's name plus `.json`.

    Example:
        >>> str(sidecar_path("data/train.bin"))
        'data/train.bin.json'
    """
    path = pathlib.Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def count_tokens(path: str | pathlib.Path, dtype: str) -> int:
    """The number of ids in a token file, after checking it exists and is whole.

    Example:
        >>> import tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "t.bin"
        >>> np.arange(5, dtype=np.uint16).tofile(file)
        >>> count_tokens(file, "uint16")
        5
    """
    path = pathlib.Path(path).expanduser()
    if dtype not in DTYPES:
        raise DataError(BAD_DTYPE_MSG.format(dtype=dtype, dtypes=DTYPES))
    if not path.is_file():
        raise FileNotFoundError(MISSING_TOKENS_MSG.format(path=path))
    size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
    if size == 0:
        raise DataError(EMPTY_TOKENS_MSG.format(path=path))
    if size % itemsize:
        raise DataError(
            NOT_A_MULTIPLE_MSG.format(
                path=path, size=size, itemsize=itemsize, dtype=dtype, dtypes=DTYPES
            )
        )
    return size // itemsize


def check_ids(path: pathlib.Path, dtype: str, vocab_size: int) -> None:
    """Raises a `DataError` if a token file holds an id >= `vocab_size`: any id of a file of
    up to 128M ids; in a larger one, an id of a sample (its first ids and evenly spaced blocks,
    ~1M ids whatever its size).

    The blocks are read, not mapped, so the check leaves nothing resident.

    Example:
        >>> import tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "t.bin"
        >>> np.array([0, 5, 2], dtype=np.uint16).tofile(file)
        >>> check_ids(file, "uint16", vocab_size=6)
    """
    itemsize = np.dtype(dtype).itemsize
    count = path.stat().st_size // itemsize
    if count <= FULL_CHECK_IDS:
        size = FULL_CHECK_CHUNK
        starts = np.arange(0, count, size)
    else:
        size = CHECK_BLOCK_SIZE
        starts = np.linspace(0, count - size, CHECK_BLOCKS).astype(np.int64)
    for start in np.unique(starts):
        block = np.fromfile(path, dtype=dtype, count=size, offset=int(start) * itemsize)
        if block.size and int(block.max()) >= vocab_size:
            offset = int(np.argmax(block >= vocab_size))
            raise DataError(
                ID_OUT_OF_VOCAB_MSG.format(
                    path=path,
                    token=int(block[offset]),
                    position=int(start) + offset,
                    vocab_size=vocab_size,
                    needed=int(block.max()) + 1,
                )
            )


class TokenSpan:
    """Tokens `start:stop` of a token file; each `windows` call maps the file and unmaps it.

    A memmap kept open holds every page read so far in the process's resident memory (the
    kernel reads ahead around each random window, so after a while most of the file); mapping
    per read keeps only the pages of one batch.

    Example:
        >>> import tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "t.bin"
        >>> np.arange(10, dtype=np.uint16).tofile(file)
        >>> span = TokenSpan(file, "uint16", 2, 10)
        >>> len(span), span.windows(np.array([0, 5]), 3).tolist()
        (8, [[2, 3, 4], [7, 8, 9]])
    """

    def __init__(self, path: pathlib.Path, dtype: str, start: int, stop: int):
        self.path, self.dtype, self.start, self.stop = path, dtype, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int32 [len(starts), length]: the tokens from each start (relative to the span)."""
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        first = self.start + np.asarray(starts, dtype=np.int64)
        return np.stack([tokens[s : s + length] for s in first]).astype(np.int32)


# What each key of a sidecar must be: its check, and the problem named when it fails.
_SIDECAR_KEYS = {
    "dtype": (lambda v: v in DTYPES, f"one of {DTYPES}"),
    "vocab": (lambda v: isinstance(v, str), "a string"),
    "vocab_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "num_tokens": (lambda v: _is_int(v) and v >= 0, "an integer"),
    "max_id": (lambda v: _is_int(v) and v >= 0, "an integer"),
    "unknown_chars": (lambda v: _is_int(v) and v >= 0, "an integer"),
    "num_bytes": (lambda v: _is_int(v) and v >= 0, "an integer"),
    "tokenizer": (lambda v: isinstance(v, dict), "an object (the tokenizer's identity)"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_sidecar(path: str | pathlib.Path) -> dict[str, Any]:
    """The metadata `paxtrain data tokenize` wrote beside a token file ({} if it has none),
    checked: a sidecar that is no such JSON object is a `DataError` naming it and the fix.

    Example:
        >>> import tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "t.bin"
        >>> read_sidecar(file)
        {}
        >>> _ = sidecar_path(file).write_text('{"vocab_size": "abc"}')
        >>> read_sidecar(file)
        Traceback (most recent call last):
        ...
        paxtrain.errors.DataError: Token sidecar ...t.bin.json is malformed ("vocab_size" is 'abc', \
not a positive integer); ...
    """
    sidecar = sidecar_path(pathlib.Path(path).expanduser())
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(MALFORMED_SIDECAR_MSG.format(sidecar=sidecar, problem=error)) from None
    if not isinstance(meta, dict):
        problem = f"a JSON {type(meta).__name__}, not an object"
        raise DataError(MALFORMED_SIDECAR_MSG.format(sidecar=sidecar, problem=problem))
    for key, (valid, expected) in _SIDECAR_KEYS.items():
        if key in meta and not valid(meta[key]):
            problem = f"{json.dumps(key)} is {meta[key]!r}, not {expected}"
            raise DataError(MALFORMED_SIDECAR_MSG.format(sidecar=sidecar, problem=problem))
    return meta


def check_recorded_ids(path: pathlib.Path, dtype: str, vocab_size: int) -> None:
    """Checks a token file's ids against `vocab_size`: through the largest id its sidecar
    records (`paxtrain data tokenize` writes it), or by reading them (`check_ids`) for a file
    without one (nanoGPT's). A sidecar that does not describe the file is a `DataError`.

    Example:
        >>> import tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "t.bin"
        >>> np.array([0, 5, 2], dtype=np.uint16).tofile(file)
        >>> _ = sidecar_path(file).write_text('{"num_tokens": 3, "max_id": 5}')
        >>> check_recorded_ids(file, "uint16", vocab_size=5)
        Traceback (most recent call last):
        ...
        paxtrain.errors.DataError: Token file ...t.bin holds ids up to 5 (recorded in ...
    """
    meta, sidecar = read_sidecar(path), sidecar_path(path)
    count = count_tokens(path, dtype)
    if "num_tokens" in meta and meta["num_tokens"] != count:
        raise DataError(
            STALE_SIDECAR_MSG.format(
                path=path, count=count, dtype=dtype, sidecar=sidecar, recorded=meta["num_tokens"]
            )
        )
    if "max_id" not in meta:
        check_ids(path, dtype, vocab_size)
    elif meta["max_id"] >= vocab_size:
        raise DataError(
            MAX_ID_MSG.format(
                path=path,
                max_id=meta["max_id"],
                sidecar=sidecar,
                vocab_size=vocab_size,
                needed=meta["max_id"] + 1,
            )
        )


def _vocabulary(
    path: pathlib.Path, meta: dict[str, Any], tokenizer: str | pathlib.Path | None
) -> Any:
    """The vocabulary that decodes a token file's ids, checked against what its sidecar
    records; None when nothing here can decode them."""
    recorded = meta.get("tokenizer")
    if tokenizer is None:
        if recorded and pathlib.Path(recorded.get("path", "")).is_file():
            tokenizer = recorded["path"]
        else:
            return VOCABS[meta["vocab"]]() if meta.get("vocab") in VOCABS else None
    vocab = BpeVocab(tokenizer)
    if not recorded:
        raise DataError(NOT_BPE_MSG.format(path=path, vocab=meta.get("vocab", "unknown"),
                                           given=tokenizer))  # fmt: skip
    given_hash = vocab.identity["tokenizer_sha256"]
    if recorded.get("tokenizer_sha256") != given_hash:
        raise DataError(
            OTHER_TOKENIZER_MSG.format(
                path=path, recorded=recorded.get("path"), given=tokenizer, given_hash=given_hash[:12],
                recorded_hash=str(recorded.get("tokenizer_sha256"))[:12],
            )
        )  # fmt: skip
    return vocab


class TokenFile:
    """Random windows of a token file for language modelling, indexed by step.

    Batches are dicts `{"inputs": int32[batch, seq_len], "targets": int32[batch, seq_len]}`,
    targets shifted by one token. Row `r` of step `s` is the window starting at the `r`-th of
    `batch_size` positions drawn from `np.random.default_rng((seed, s))`: a pure function of
    (seed, step, row), so `train_batch(s, rows=...)` reads only those rows' windows.

    Evaluation reads `eval_batches` fixed batches of evenly spaced windows from `eval_path`, or
    from the last `eval_fraction` of `path` (then held out of training) when `eval_path` is None.

    Args:
      path: the token file (e.g. nanoGPT's `train.bin`).
      seq_len: tokens per example.
      batch_size: examples per batch.
      vocab_size: ids are below it; None reads it from the sidecar `path + ".json"` written by
        `paxtrain data tokenize`.
      dtype: "uint16" or "uint32"; None reads it from the sidecar, else "uint16" (nanoGPT's).
      eval_path: a separate token file for evaluation (e.g. `val.bin`), same dtype.
      eval_fraction: share of `path` held out for evaluation when `eval_path` is None.
      eval_batches: number of evaluation batches.
      seed: seed of the window positions.
      tokenizer: the `tokenizer.json` the file was written with (`--tokenizer`): checked
        against the identity its sidecar records, and used to decode samples; None: the one
        the sidecar names, if it is still there.

    Example:
        >>> import tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "tokens.bin"
        >>> (np.arange(10_000) % 50).astype(np.uint16).tofile(file)
        >>> data = TokenFile(file, seq_len=16, batch_size=4, vocab_size=50)
        >>> batch = data.train_batch(0)
        >>> batch["inputs"].shape, bool((batch["targets"][:, :-1] == batch["inputs"][:, 1:]).all())
        ((4, 16), True)
    """

    def __init__(
        self,
        path: str | pathlib.Path,
        seq_len: int = 128,
        batch_size: int = 32,
        vocab_size: int | None = None,
        dtype: str | None = None,
        eval_path: str | pathlib.Path | None = None,
        eval_fraction: float = 0.1,
        eval_batches: int = 8,
        seed: int = 0,
        tokenizer: str | pathlib.Path | None = None,
    ):
        if not 0 < eval_fraction < 1:
            raise ArgumentError(
                "eval_fraction", EVAL_FRACTION_MSG.format(eval_fraction=eval_fraction)
            )
        self.path = pathlib.Path(path).expanduser()
        meta = read_sidecar(self.path)
        dtype = dtype or meta.get("dtype", "uint16")
        vocab_size = vocab_size or meta.get("vocab_size")
        count = count_tokens(self.path, dtype)
        if vocab_size is None:
            raise DataError(
                NO_VOCAB_SIZE_MSG.format(path=self.path, sidecar=sidecar_path(self.path))
            )
        # A known vocabulary decodes samples; a file of other ids (GPT-2 BPE...) has none.
        self.vocab = _vocabulary(self.path, meta, tokenizer)
        window = seq_len + 1
        if eval_path is None:
            split = int(count * (1 - eval_fraction))
            self.train_tokens = TokenSpan(self.path, dtype, 0, split)
            self.eval_tokens = TokenSpan(self.path, dtype, split, count)
            eval_name = f"The held-out {eval_fraction:.0%} of {self.path}"
        else:
            eval_path = pathlib.Path(eval_path).expanduser()
            self.train_tokens = TokenSpan(self.path, dtype, 0, count)
            self.eval_tokens = TokenSpan(eval_path, dtype, 0, count_tokens(eval_path, dtype))
            check_recorded_ids(eval_path, dtype, vocab_size)
            eval_name = f"Eval token file {eval_path}"
        parts = (
            (f"The training part of {self.path}", self.train_tokens),
            (eval_name, self.eval_tokens),
        )
        for what, part in parts:
            if len(part) < window:
                raise DataError(TOO_SHORT_TOKENS_MSG.format(what=what, n=len(part), window=window))
        check_recorded_ids(self.path, dtype, vocab_size)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.num_eval_batches = eval_batches
        self.info = {
            "vocab_size": int(vocab_size),
            "seq_len": seq_len,
            "tokens_per_batch": batch_size * seq_len,
        }
        if meta.get("num_bytes") and meta.get("num_tokens"):  # for bits per byte
            self.info["bytes_per_token"] = meta["num_bytes"] / meta["num_tokens"]

    def _windows(self, tokens: TokenSpan, starts: np.ndarray) -> dict[str, np.ndarray]:
        windows = tokens.windows(starts, self.seq_len + 1)
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def window_starts(self, step: int) -> np.ndarray:
        """Where each row's window of step `step` starts in the training tokens.

        Example:
            >>> data.window_starts(3)  # doctest: +SKIP
            array([ 81532, 402117, ...])
        """
        rng = np.random.default_rng((self.seed, step))
        high = len(self.train_tokens) - self.seq_len  # the last window ends at the last token
        return rng.integers(0, high, size=self.batch_size)

    def train_batch(self, step: int, rows: slice | None = None) -> dict[str, np.ndarray]:
        """The training batch of `step`, or only its rows `rows` (read alone, nothing more).

        Example:
            >>> data.train_batch(5, rows=slice(0, 2))["inputs"].shape  # doctest: +SKIP
            (2, 128)
        """
        starts = self.window_starts(step)
        return self._windows(self.train_tokens, starts[rows or slice(None)])

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """`eval_batches` fixed batches of evenly spaced windows of the eval tokens.

        Example:
            >>> [b["inputs"].shape for b in data.eval_batches()][:1]  # doctest: +SKIP
            [(32, 128)]
        """
        count = self.num_eval_batches * self.batch_size
        high = len(self.eval_tokens) - self.seq_len - 1
        starts = np.linspace(0, high, count).astype(np.int64)
        for i in range(self.num_eval_batches):
            batch_starts = starts[i * self.batch_size : (i + 1) * self.batch_size]
            yield self._windows(self.eval_tokens, batch_starts)
