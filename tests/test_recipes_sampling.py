"""Decoding with a cache (`paxtrain.recipes.sampling`): greedy decoding equals recomputing the
whole sequence each step, token for token; sampling is reproducible from its key; top-k and
top-p keep the tokens NumPy says; bad settings are refused with a message naming them."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paxtrain.data.text import CharVocab
from paxtrain.recipes.char_rnn import CharRNN, PrintSample
from paxtrain.recipes.llama_lm import LlamaLM
from paxtrain.recipes.sampling import filter_logits, sample
from paxtrain.recipes.transformer_lm import TransformerLM

LLAMA = {"vocab_size": 23, "num_heads": 4, "num_kv_heads": 2, "model_dim": 16}
# Learned positions: the prompts and new tokens of the tests fit in seq_len.
GPT = {"vocab_size": 23, "seq_len": 24, "num_heads": 2, "model_dim": 16}
MODELS = {
    "llama": lambda: LlamaLM(**LLAMA),
    "llama_scanned_mqa": lambda: LlamaLM(**{**LLAMA, "num_kv_heads": 1}, scan_layers=True),
    "char_rnn": lambda: CharRNN(vocab_size=23, embed_dim=8, hidden_dim=16),
    "transformer": lambda: TransformerLM(**GPT),
    "transformer_scanned_remat": lambda: TransformerLM(**GPT, scan_layers=True, remat="dots"),
}


@functools.partial(jax.jit, static_argnums=2)
def greedy_without_cache(model, prompt, new):
    """The reference: every step runs the model on the whole sequence so far (a buffer whose
    zero tail the causal models cannot see from the positions that are read)."""
    start = prompt.shape[0]
    buffer = jnp.zeros(start + new, jnp.int32).at[:start].set(prompt)

    def step(buffer, position):
        token = jnp.argmax(model(buffer[None])[0, position - 1])
        return buffer.at[position].set(token), None

    return jax.lax.scan(step, buffer, jnp.arange(start, start + new))[0][start:]


@pytest.mark.parametrize("name", MODELS)
def test_greedy_decoding_with_the_cache_equals_recomputing_everything(name):
    model = MODELS[name]()
    prompt = [3, 1, 4, 1, 5]
    cached = sample(model, jnp.array(prompt), 12, jax.random.PRNGKey(0), temperature=0.0)
    assert cached.tolist() == greedy_without_cache(model, jnp.array(prompt), 12).tolist()


@pytest.mark.parametrize("name", ["llama", "transformer"])
def test_sampling_is_reproducible_from_its_key(name):
    model = MODELS[name]()
    a, b, c = (sample(model, jnp.array([1, 2]), 20, jax.random.PRNGKey(s), temperature=1.5)
               for s in (7, 7, 8))  # fmt: skip
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_top_k_one_is_greedy():
    model = MODELS["char_rnn"]()
    top1 = sample(model, jnp.array([2]), 10, jax.random.PRNGKey(3), temperature=1.0, top_k=1)
    greedy = sample(model, jnp.array([2]), 10, jax.random.PRNGKey(4), temperature=0.0)
    assert top1.tolist() == greedy.tolist()


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (None, 0.6), (8, 0.9), (None, 1.0)])
def test_filter_keeps_the_tokens_numpy_keeps(top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(3, 20)).astype(np.float32)
    got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p)))
    for row, kept in zip(logits, got):
        # As Hugging Face's warpers: top-k first, then top-p over what top-k left.
        order = np.argsort(-row)[: top_k or 20]
        probs = np.exp(row[order] - row.max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        keep = np.zeros(20, bool)
        keep[order[before < top_p]] = True
        np.testing.assert_array_equal(kept, keep)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": []}, "The prompt is empty"),
        ({"max_len": 10}, r"The prompt \(2 tokens\) plus 9 new tokens is 11 positions, more than the 10"),
        ({"top_k": 0}, "top_k is 0; it must be at least 1"),
        ({"top_p": 0.0}, r"top_p is 0.0; it must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p is 1.5; it must be in \(0, 1\]"),
        ({"temperature": -1.0}, "temperature is -1.0; it must be at least 0"),
    ],
)
def test_bad_sampling_settings_are_refused_before_any_compile(kwargs, message):
    args = {"prompt": [1, 2], "max_new_tokens": 9, "key": jax.random.PRNGKey(0), **kwargs}
    args["prompt"] = jnp.array(args["prompt"], jnp.int32)
    with pytest.raises(ValueError, match=message):
        sample(MODELS["llama"](), **args)


def test_a_model_without_a_decoder_is_named(monkeypatch):
    monkeypatch.delattr(TransformerLM, "decoder")  # a model as TransformerLM was before its cache
    model = TransformerLM(vocab_size=10, seq_len=8, num_heads=2, model_dim=8)
    with pytest.raises(TypeError, match="TransformerLM cannot decode incrementally"):
        sample(model, jnp.array([1]), 3, jax.random.PRNGKey(0))


def test_a_transformer_decodes_no_further_than_its_learned_positions():
    model = MODELS["transformer"]()  # seq_len 24
    assert sample(model, jnp.array([1, 2]), 22, jax.random.PRNGKey(0)).shape == (22,)
    with pytest.raises(ValueError, match=r"A decoder of 25 positions .* seq_len=24 position"):
        sample(model, jnp.array([1, 2]), 23, jax.random.PRNGKey(0))


def _end_of_training(model, tmp_path, **options):
    """PrintSample's end-of-training sample of `model` (on a stand-in trainer): its text."""
    trainer = types.SimpleNamespace(
        preempted=False, is_main_process=True, run_dir=tmp_path,
        data=types.SimpleNamespace(vocab=CharVocab()), state=types.SimpleNamespace(model=model),
    )  # fmt: skip
    PrintSample(**options).on_train_end(trainer)
    return (tmp_path / "sample.txt").read_text()


@pytest.mark.parametrize("num_chars, expected_chars", [(10, 10), (40, 28)])
def test_the_end_of_training_sample_of_a_transformer_is_the_samplers(
    tmp_path, capsys, num_chars, expected_chars
):
    vocab = CharVocab()
    model = TransformerLM(vocab_size=len(vocab), seq_len=32, num_heads=2, model_dim=16)
    text = _end_of_training(model, tmp_path, prompt="def ", num_chars=num_chars, seed=3)
    ids = sample(model, vocab.encode("def "), expected_chars, jax.random.PRNGKey(3), 0.8)
    assert text == "def " + vocab.decode(ids)
    cut = "the sample stops after 28 of 40 characters" in capsys.readouterr().out
    assert cut == (num_chars != expected_chars)
