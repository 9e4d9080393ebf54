"""Datasets as step-indexed sources: batch `i` is a pure function of (seed, i).

A source that can produce any step's batch directly needs no iterator state in checkpoints and
never replays the stream on resume.
"""

from paxtrain.data.images import ImageSplits, LabeledImages, load_digits, load_mnist, read_idx
from paxtrain.data.source import DataSource, Prefetcher
from paxtrain.data.text import CharCorpus, CharVocab, stdlib_corpus

__all__ = [
    "CharCorpus",
    "CharVocab",
    "DataSource",
    "ImageSplits",
    "LabeledImages",
    "Prefetcher",
    "load_digits",
    "load_mnist",
    "read_idx",
    "stdlib_corpus",
]
