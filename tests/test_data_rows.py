"""`train_batch(step, rows=slice)`: every source returns exactly those rows of its full batch."""

import inspect

import numpy as np
import pytest

from paxtrain.data import CharCorpus, GrainSource, LabeledImages, TokenFile


def token_file(tmp_path):
    path = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 64, 10_000).astype(np.uint16).tofile(path)
    return TokenFile(path, seq_len=16, batch_size=8, vocab_size=64)


def grain_source(tmp_path):
    grain = pytest.importorskip("grain")
    images = grain.MapDataset.range(100).map(lambda i: {"x": np.full(2, i), "y": np.int32(i)})
    return GrainSource(images, batch_size=8, seed=2)


SOURCES = {
    "CharCorpus": lambda tmp_path: CharCorpus(seq_len=16, batch_size=8, max_chars=20_000),
    "LabeledImages": lambda tmp_path: LabeledImages("digits", batch_size=8),
    "TokenFile": token_file,
    "GrainSource": grain_source,
}


@pytest.mark.parametrize("name", SOURCES)
def test_rows_equal_the_rows_of_the_full_batch(name, tmp_path):
    data = SOURCES[name](tmp_path)
    assert "rows" in inspect.signature(data.train_batch).parameters
    for step in (0, 5, 1000):  # 1000: another epoch of the digits
        full = data.train_batch(step)
        for rows in (slice(0, 4), slice(4, 8), slice(3, 4), slice(0, 8)):
            part = data.train_batch(step, rows=rows)
            assert part.keys() == full.keys()
            for key in full:
                assert part[key].dtype == full[key].dtype
                np.testing.assert_array_equal(part[key], full[key][rows], err_msg=f"{key} {rows}")
