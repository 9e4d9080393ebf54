"""Character-level text data that needs no download: the Python standard library's own source."""

from __future__ import annotations

import pathlib
import sysconfig
from collections.abc import Iterator

import numpy as np

from paxtrain.errors import ArgumentError, DataError

# A fixed list, so the default corpus is the same on every machine with the same Python version.
STDLIB_FILES = (
    "argparse.py", "ast.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "configparser.py", "contextlib.py", "dataclasses.py", "datetime.py", "difflib.py",
    "enum.py", "fractions.py", "functools.py", "heapq.py", "inspect.py", "json/decoder.py",
    "json/encoder.py", "logging/__init__.py", "pathlib.py", "pprint.py", "random.py",
    "shutil.py", "statistics.py", "string.py", "subprocess.py", "tempfile.py", "textwrap.py",
    "threading.py", "tokenize.py", "typing.py",
)  # fmt: skip

NO_CORPUS_MSG = """\
None of the standard-library files used as the default corpus were found under {root}.
Point the recipe at any text file instead: `data.path=/path/to/file.txt`."""

MISSING_FILE_MSG = """\
Text file not found: {path}
Check `data.path` (relative paths are resolved from the directory you run paxtrain in)."""

TOO_SHORT_MSG = """\
The corpus has {n} characters, too few for seq_len={seq_len} with a {frac:.0%} held-out split.
Use a longer text file (`data.path`) or a smaller `data.seq_len`."""

EMPTY_FILE_MSG = "path={path} is empty: `data.path` must be a text file with something to learn."

IS_DIRECTORY_MSG = "path={path} is a directory: `data.path` must be one UTF-8 text file."

NOT_UTF8_MSG = """\
path={path} is not UTF-8 text ({reason}): `data.path` must be a text file; a binary file would \
train on replacement characters."""

EVAL_FRACTION_MSG = """\
eval_fraction={eval_fraction} must be a share between 0 and 1 (exclusive) of the text held out \
for evaluation, e.g. `data.eval_fraction=0.1`."""

BATCH_TOO_LARGE_MSG = """\
A batch of batch_size={batch_size} windows of seq_len={seq_len} ({needed} characters) is larger \
than the {n} training characters: lower `data.batch_size` or `data.seq_len`, or use a longer text."""


def stdlib_corpus(max_chars: int | None = None) -> str:
    """The source of a fixed list of standard-library modules, concatenated in a fixed order.

    Example:
        >>> text = stdlib_corpus(max_chars=1000)
        >>> len(text)
        1000
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    texts = [
        (root / name).read_text(encoding="utf-8")
        for name in STDLIB_FILES
        if (root / name).is_file()
    ]
    if not texts:
        raise FileNotFoundError(NO_CORPUS_MSG.format(root=root))
    text = "\n".join(texts)
    return text[:max_chars] if max_chars else text


class CharVocab:
    """Printable ASCII, newline and tab, plus one id for every other character.

    A fixed vocabulary keeps checkpoints compatible across corpora.

    Example:
        >>> vocab = CharVocab()
        >>> vocab.decode(vocab.encode("hi\\n"))
        'hi\\n'
    """

    UNKNOWN = "\N{REPLACEMENT CHARACTER}"

    def __init__(self) -> None:
        self.chars = ["\n", "\t", *map(chr, range(32, 127)), self.UNKNOWN]
        self._table = np.full(0x110000, len(self.chars) - 1, dtype=np.int32)
        for i, c in enumerate(self.chars):
            self._table[ord(c)] = i

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return self._table[codes]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


class ByteVocab:
    """The 256 byte values of UTF-8 text: any text, any language, no unknown id.

    Example:
        >>> vocab = ByteVocab()
        >>> vocab.encode("hé").tolist(), vocab.decode(vocab.encode("hé"))
        ([104, 195, 169], 'hé')
    """

    def __len__(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        data = np.asarray(ids).reshape(-1).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")


VOCABS = {"bytes": ByteVocab, "chars": CharVocab}


class CharCorpus:
    """Random windows of a text for language modelling, indexed by step.

    Batches are dicts `{"inputs": int32[batch, seq_len], "targets": int32[batch, seq_len]}`
    where targets are inputs shifted by one character. The last `eval_fraction` of the text is
    held out; evaluation reads `eval_batches` fixed, evenly spaced batches from it.

    Args:
      path: a UTF-8 text file; None uses `stdlib_corpus()`.
      seq_len: characters per example.
      batch_size: examples per batch.
      eval_fraction: share of the text held out for evaluation.
      eval_batches: number of evaluation batches.
      max_chars: truncate the corpus (for quick runs).
      seed: seed of the window positions.

    Example:
        >>> data = CharCorpus(seq_len=16, batch_size=2, max_chars=10_000)
        >>> data.train_batch(0)["inputs"].shape
        (2, 16)
    """

    def __init__(
        self,
        path: str | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        eval_fraction: float = 0.1,
        eval_batches: int = 8,
        max_chars: int | None = None,
        seed: int = 0,
    ):
        if not 0 < eval_fraction < 1:
            raise ArgumentError(
                "eval_fraction", EVAL_FRACTION_MSG.format(eval_fraction=eval_fraction)
            )
        if path is None:
            text = stdlib_corpus(max_chars)
        else:
            file = pathlib.Path(path).expanduser()
            if file.is_dir():
                raise IsADirectoryError(IS_DIRECTORY_MSG.format(path=file))
            if not file.is_file():
                raise FileNotFoundError(MISSING_FILE_MSG.format(path=file))
            try:
                text = file.read_text(encoding="utf-8")[:max_chars]
            except UnicodeDecodeError as error:
                reason = f"byte {error.start} is {error.object[error.start : error.start + 1]!r}"
                raise DataError(NOT_UTF8_MSG.format(path=file, reason=reason)) from None
            if not text:
                raise DataError(EMPTY_FILE_MSG.format(path=file))
        self.vocab = CharVocab()
        ids = self.vocab.encode(text)
        split = int(len(ids) * (1 - eval_fraction))
        if min(split, len(ids) - split) <= seq_len + 1:
            raise DataError(TOO_SHORT_MSG.format(n=len(ids), seq_len=seq_len, frac=eval_fraction))
        if batch_size * seq_len > split:
            raise DataError(
                BATCH_TOO_LARGE_MSG.format(
                    batch_size=batch_size, seq_len=seq_len, needed=batch_size * seq_len, n=split
                )
            )
        self.train_ids, self.eval_ids = ids[:split], ids[split:]
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.num_eval_batches = eval_batches
        self.info = {
            "vocab_size": len(self.vocab),
            "seq_len": seq_len,
            "tokens_per_batch": batch_size * seq_len,
        }

    def _windows(self, ids: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        offsets = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        windows = ids[offsets]
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def train_batch(self, step: int, rows: slice | None = None) -> dict[str, np.ndarray]:
        """The batch of `step`, a pure function of (seed, step); only its rows `rows` if given.

        Example:
            >>> data = CharCorpus(seq_len=8, batch_size=4, max_chars=5000)
            >>> part = data.train_batch(3, rows=slice(2, 4))["inputs"]
            >>> bool((part == data.train_batch(3)["inputs"][2:4]).all())
            True
        """
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, len(self.train_ids) - self.seq_len - 1, size=self.batch_size)
        return self._windows(self.train_ids, starts[rows or slice(None)])

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        count = self.num_eval_batches * self.batch_size
        starts = np.linspace(0, len(self.eval_ids) - self.seq_len - 1, count).astype(np.int64)
        for i in range(self.num_eval_batches):
            yield self._windows(
                self.eval_ids, starts[i * self.batch_size : (i + 1) * self.batch_size]
            )

    def unigram_bits_per_char(self) -> float:
        """Entropy (bits/char) of the held-out text under the training text's character counts.

        The baseline a language model must beat.

        Example:
            >>> round(CharCorpus(seq_len=8, max_chars=5000).unigram_bits_per_char(), 1) > 3
            True
        """
        counts = np.bincount(self.train_ids, minlength=len(self.vocab)) + 1.0
        probs = counts / counts.sum()
        return float(-np.mean(np.log2(probs[self.eval_ids])))
