"""Datasets as step-indexed sources: batch `i` is a pure function of (seed, i).

A source that can produce any step's batch directly needs no iterator state in checkpoints and
never replays the stream on resume.
"""

from paxtrain.data.columns import NpyColumns
from paxtrain.data.grain_source import GrainSource
from paxtrain.data.images import ImageSplits, LabeledImages, load_digits, load_mnist, read_idx
from paxtrain.data.source import DataSource, Prefetcher
from paxtrain.data.text import ByteVocab, CharCorpus, CharVocab, stdlib_corpus
from paxtrain.data.tokenize import tokenize_files
from paxtrain.data.tokens import TokenFile
from paxtrain.errors import DataError

__all__ = [
    "ByteVocab",
    "CharCorpus",
    "CharVocab",
    "DataError",
    "DataSource",
    "GrainSource",
    "ImageSplits",
    "LabeledImages",
    "NpyColumns",
    "Prefetcher",
    "TokenFile",
    "load_digits",
    "load_mnist",
    "read_idx",
    "stdlib_corpus",
    "tokenize_files",
]
