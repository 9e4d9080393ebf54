"""Sampling text from a language model with a cache: a prompt, then one token per step.

A model that can decode incrementally has `decoder(batch_size, max_len)`, a copy whose calls
continue one another (`LlamaLM`, `TransformerLM`: a KV cache per attention; `CharRNN`: the
recurrent carry). The whole loop is one jitted `lax.scan` that threads the decoder through
`pax.purecall`: the prompt is read once, then each new token costs one position, not the whole
sequence so far.

    >>> import jax, jax.numpy as jnp
    >>> from paxtrain.recipes.llama_lm import LlamaLM
    >>> model = LlamaLM(vocab_size=32, num_heads=2, num_kv_heads=1, model_dim=8)
    >>> ids = sample(model, jnp.array([1, 2, 3]), max_new_tokens=5, key=jax.random.PRNGKey(0))
    >>> ids.shape
    (5,)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

import paxtrain as pax
import paxtrain.nn as nn

NO_DECODER_MSG = (
    "{cls} cannot decode incrementally: it has no `decoder(batch_size, max_len)` method "
    "(the recipes' LlamaLM, TransformerLM and CharRNN have one)."
)
EMPTY_PROMPT_MSG = "The prompt is empty: give at least one token to continue."
TOO_LONG_MSG = (
    "The prompt ({prompt} tokens) plus {new} new tokens is {total} positions, more than the "
    "{limit} the model was trained with (`data.seq_len`): shorten the prompt or ask for fewer "
    "tokens (`--max-new-tokens`)."
)
TOP_K_MSG = "top_k is {top_k}; it must be at least 1 (or None: every token)."
TOP_P_MSG = "top_p is {top_p}; it must be in (0, 1] (1: every token)."
TEMPERATURE_MSG = "temperature is {temperature}; it must be at least 0 (0: always the likeliest)."


def with_attention_caches(
    blocks: nn.Sequential | nn.ScanLayers, batch_size: int, max_len: int
) -> nn.Sequential | nn.ScanLayers:
    """`blocks` whose every `attention` keeps a KV cache of `max_len` positions (its
    `with_cache`): the layers of a model's `decoder`, stacked or not as they were.

    Example:
        >>> from paxtrain.recipes.llama_lm import LlamaBlock
        >>> blocks = nn.ScanLayers([LlamaBlock(8, 2, 1, 16) for _ in range(3)])
        >>> with_attention_caches(blocks, 1, 4).block.attention.cache.keys.shape
        (3, 1, 4, 1, 4)
    """

    def cached(block: pax.Module) -> pax.Module:
        return block.replace(attention=block.attention.with_cache(batch_size, max_len))

    if isinstance(blocks, nn.ScanLayers):
        return nn.ScanLayers([cached(b) for b in blocks.unstack()])
    return blocks.replace(layers=tuple(cached(b) for b in blocks.layers))


def room_for(model: pax.Module, prompt_length: int, wanted: int) -> int:
    """How many of `wanted` new tokens fit after a prompt of `prompt_length`: all of them, or,
    for a model with learned positions (a `seq_len` attribute, as `TransformerLM`), as many as
    its positions leave.

    Example:
        >>> from paxtrain.recipes.transformer_lm import TransformerLM
        >>> room_for(TransformerLM(vocab_size=8, seq_len=16, num_heads=2, model_dim=8), 4, 100)
        12
    """
    seq_len = getattr(model, "seq_len", None)
    return wanted if seq_len is None else max(min(wanted, seq_len - prompt_length), 0)


def filter_logits(logits: jax.Array, top_k: int | None = None, top_p: float = 1.0) -> jax.Array:
    """`logits` [..., vocab] with the tokens outside the `top_k` likeliest, and outside the
    smallest set whose probability reaches `top_p` (nucleus sampling, over what top-k left, as Hugging Face orders them), set to -inf.

    Example:
        >>> logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
        >>> jnp.isfinite(filter_logits(logits, top_k=3)).tolist()
        [True, True, True, False]
        >>> jnp.isfinite(filter_logits(logits, top_p=0.7)).tolist()
        [True, True, False, False]
    """
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        # A token is kept while the tokens likelier than it have not reached top_p yet.
        before = jnp.cumsum(probs, axis=-1) - probs
        # Back from likeliest-first order to the vocabulary's (argsort inverts the permutation).
        keep = jnp.take_along_axis(before < top_p, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def choose(
    logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None, top_p: float
) -> jax.Array:
    """The next token of `logits` [..., vocab]: the likeliest at temperature 0, else drawn from
    the filtered softmax at `temperature`.

    Example:
        >>> int(choose(jnp.array([0.1, 2.0, 0.3]), jax.random.PRNGKey(0), 0.0, None, 1.0))
        1
    """
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, filter_logits(logits / temperature, top_k, top_p))


def check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
    """Raises ValueError naming a sampling setting outside its domain."""
    if temperature < 0:
        raise ValueError(TEMPERATURE_MSG.format(temperature=temperature))
    if top_k is not None and top_k < 1:
        raise ValueError(TOP_K_MSG.format(top_k=top_k))
    if not 0 < top_p <= 1:
        raise ValueError(TOP_P_MSG.format(top_p=top_p))


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "temperature", "top_k", "top_p"))
def _decode(
    decoder: pax.Module,
    prompt: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float,
) -> jax.Array:
    decoder, logits = pax.purecall(decoder, prompt[None])

    def step(carry: tuple[pax.Module, jax.Array], key: jax.Array) -> tuple[Any, jax.Array]:
        decoder, last = carry
        token = choose(last, key, temperature, top_k, top_p)
        decoder, logits = pax.purecall(decoder, token[None, None])
        return (decoder, logits[0, -1]), token

    keys = jax.random.split(key, max_new_tokens)
    _, tokens = jax.lax.scan(step, (decoder, logits[0, -1]), keys)
    return tokens


def sample(
    model: pax.Module,
    prompt: jax.Array,
    max_new_tokens: int,
    key: jax.Array,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float = 1.0,
    max_len: int | None = None,
) -> jax.Array:
    """`max_new_tokens` ids after the 1-d `prompt` ids, decoded with the model's cache.

    Args:
      model: a model with `decoder(batch_size, max_len)` (in eval mode: no dropout).
      prompt: the ids to continue (at least one).
      max_new_tokens: how many ids to add.
      key: the sampling key; the same key gives the same ids.
      temperature: softmax temperature; 0 takes the likeliest id each step (greedy).
      top_k: sample among the `top_k` likeliest ids only (None: all).
      top_p: sample among the smallest set of ids whose probability reaches `top_p`.
      max_len: the most positions the model may see (its training context for models with
        learned positions); None: no limit.

    Returns:
      The new ids, [max_new_tokens].
    """
    if not hasattr(model, "decoder"):
        raise TypeError(NO_DECODER_MSG.format(cls=type(model).__name__))
    check_sampling(temperature, top_k, top_p)
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.shape[0] == 0:
        raise ValueError(EMPTY_PROMPT_MSG)
    total = prompt.shape[0] + max_new_tokens
    if max_len is not None and total > max_len:
        raise ValueError(
            TOO_LONG_MSG.format(
                prompt=prompt.shape[0], new=max_new_tokens, total=total, limit=max_len
            )
        )
    return _decode(
        model.decoder(1, total),
        prompt,
        key,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        top_p=float(top_p),
    )
