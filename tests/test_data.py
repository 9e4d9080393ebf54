"""Step-indexed text data and the prefetcher."""

import numpy as np
import pytest

from paxtrain.data import CharCorpus, CharVocab, Prefetcher, stdlib_corpus


@pytest.fixture(scope="module")
def corpus():
    return CharCorpus(seq_len=16, batch_size=4, max_chars=20_000, eval_batches=3)


def test_stdlib_corpus_is_deterministic_python_source():
    text = stdlib_corpus(max_chars=50_000)
    assert text == stdlib_corpus(max_chars=50_000)
    assert "def " in text and "import " in text


def test_vocab_round_trip_and_unknown_characters():
    vocab = CharVocab()
    assert len(vocab) == 98
    assert vocab.decode(vocab.encode("x = 1\n\tok")) == "x = 1\n\tok"
    assert vocab.decode(vocab.encode("é")) == CharVocab.UNKNOWN


def test_batches_are_shifted_windows_and_a_pure_function_of_step(corpus):
    batch = corpus.train_batch(7)
    assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(corpus.train_batch(7)["inputs"], batch["inputs"])
    assert not np.array_equal(corpus.train_batch(8)["inputs"], batch["inputs"])
    assert corpus.info == {"vocab_size": 98, "seq_len": 16, "tokens_per_batch": 64}


def test_eval_batches_are_fixed_and_held_out(corpus):
    first = [b["inputs"] for b in corpus.eval_batches()]
    assert len(first) == 3
    np.testing.assert_array_equal(first[0], next(corpus.eval_batches())["inputs"])
    assert 2 < corpus.unigram_bits_per_char() < 7


def test_missing_file_and_short_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        CharCorpus(path=str(tmp_path / "nope.txt"))
    short = tmp_path / "short.txt"
    short.write_text("abc" * 10)
    with pytest.raises(ValueError, match="too few for seq_len=128"):
        CharCorpus(path=str(short))


def test_prefetcher_yields_consecutive_steps_and_stacks_groups(corpus):
    with Prefetcher(corpus, start_step=5) as batches:
        for step in (5, 6, 7):
            np.testing.assert_array_equal(
                next(batches)["inputs"], corpus.train_batch(step)["inputs"]
            )
    with Prefetcher(corpus, start_step=2, group=3) as batches:
        stacked = next(batches)
        assert stacked["inputs"].shape == (3, 4, 16)
        np.testing.assert_array_equal(stacked["inputs"][1], corpus.train_batch(3)["inputs"])
        np.testing.assert_array_equal(next(batches)["inputs"][0], corpus.train_batch(5)["inputs"])


def test_prefetcher_reraises_data_errors():
    class Broken:
        info: dict = {}

        def train_batch(self, step):
            raise OSError(f"disk gone at step {step}")

    with Prefetcher(Broken(), start_step=3) as batches, pytest.raises(OSError, match="step 3"):
        next(batches)
