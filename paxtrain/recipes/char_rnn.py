"""Character-level LSTM language model whose time loop is a `scan` threading the LSTM module.

`model=gru` (a config group) swaps the cell for a GRU.

    paxtrain fit char_rnn    # from any directory: the config in paxtrain/configs/

Trains on the Python standard library's source by default (or `data.path=any.txt`), reports
bits per character on held-out text, and prints a sample at the end.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.recipes.sampling import room_for, sample
from paxtrain.train.hooks import Hook

NO_DECODER_NOTE = (
    "paxtrain: no sample: {model} has no `decoder(batch_size, max_len)` to sample with"
)
SAMPLE_CUT_NOTE = (
    "paxtrain: the sample stops after {num_chars} of {asked} characters: the prompt and the "
    "sample share the model's seq_len={seq_len} positions (`callbacks.0.num_chars`)"
)

# A forget-gate bias of 1 keeps the LSTM's memory open early in training (Jozefowicz et al., 2015).
CELLS = {
    "lstm": functools.partial(nn.LSTM, forget_gate_bias=1.0),
    "gru": nn.GRU,
    "rnn": nn.VanillaRNN,
}


class CharRNN(pax.Module):
    """Embedding, one recurrent layer (LSTM by default) run with `pax.scan`, a linear read-out.

    Args:
      vocab_size: number of token ids (from the data: `data.info`).
      embed_dim: width of the token embedding.
      hidden_dim: width of the recurrent state.
      cell: "lstm" or "gru".

    Example:
        >>> model = CharRNN(vocab_size=98, embed_dim=8, hidden_dim=16)
        >>> model(jnp.zeros((2, 5), jnp.int32)).shape
        (2, 5, 98)
    """

    def __init__(
        self, vocab_size: int, embed_dim: int = 64, hidden_dim: int = 256, cell: str = "lstm"
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.vocab_size = vocab_size
        # Unit-scale embeddings feed the cell a full-size signal from the first step; PAX's
        # default (normal, std 0.01) learns far slower here (eval loss 2.95 vs 2.33 at step 100).
        self.embed = nn.Embed(vocab_size, embed_dim, w_init=nn.initializers.truncated_normal(1.0))
        self.cell = CELLS[cell](embed_dim, hidden_dim)
        self.head = nn.Linear(hidden_dim, vocab_size)
        # Set by `decoder`: the recurrent state that the next call starts from.
        self.register_state("carry", None)

    def run_cell(self, state: Any, xs: jax.Array) -> tuple[Any, jax.Array]:
        """Runs the cell over xs [batch, time, embed]; returns the last state and the outputs."""

        def step(carry, x):
            # The seed tutorial's pattern: the module is part of the carry and is called
            # through module_and_value, so a cell with states (e.g. dropout keys) works as well.
            cell, state = carry
            cell, (state, hidden) = pax.module_and_value(cell)(state, x)
            return (cell, state), hidden

        (_, state), hiddens = pax.scan(step, (self.cell, state), xs, time_major=False)
        return state, hiddens

    def __call__(self, ids: jax.Array) -> jax.Array:
        state = self.cell.initial_state(ids.shape[0]) if self.carry is None else self.carry
        state, hiddens = self.run_cell(state, self.embed(ids))
        if self.carry is not None:
            self.carry = state
        return self.head(hiddens)

    def decoder(self, batch_size: int, max_len: int) -> CharRNN:
        """A copy for decoding (`paxtrain.recipes.sampling`): each call continues from the
        recurrent state the call before ended in (an RNN's carry is its cache; any length).

        Example:
            >>> model = CharRNN(vocab_size=98, embed_dim=8, hidden_dim=16)
            >>> decoder, logits = pax.purecall(model.decoder(1, 8), jnp.array([[5, 6]]))
            >>> decoder, logits = pax.purecall(decoder, jnp.array([[7]]))
            >>> logits.shape
            (1, 1, 98)
        """
        return self.replace(carry=self.cell.initial_state(batch_size))

    def loss(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean cross-entropy of the next character; also reported in bits per character."""
        logits = self(batch["inputs"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        return loss, {"bits_per_char": loss / math.log(2)}


class PrintSample(Hook):
    """Prints (and saves as `sample.txt`) text sampled from the model at the end of training.

    Args:
      prompt: the text the sample continues.
      num_chars: characters sampled.
      temperature: softmax temperature of the sampling (lower: more likely characters).
      seed: seed of the sampling.

    Example:
        >>> trainer.add_hook(PrintSample(prompt="def ", num_chars=200))  # doctest: +SKIP
    """

    def __init__(
        self, prompt: str = "def ", num_chars: int = 300, temperature: float = 0.8, seed: int = 0
    ):
        self.prompt, self.num_chars = prompt, num_chars
        self.temperature, self.seed = temperature, seed

    def on_train_end(self, trainer: Any) -> None:
        if trainer.preempted:  # no time to spare: the job is being stopped
            return
        vocab = getattr(trainer.data, "vocab", None)
        if vocab is None:  # e.g. a token file of another tokenizer's ids: nothing to decode
            print("paxtrain: no sample: the data has no vocabulary to decode it (`callbacks=[]`)")
            return
        model = trainer.state.model.eval()
        if not hasattr(model, "decoder"):
            print(NO_DECODER_NOTE.format(model=type(model).__name__))
            return
        prompt, key = jnp.asarray(vocab.encode(self.prompt)), jax.random.PRNGKey(self.seed)
        num_chars = room_for(model, len(prompt), self.num_chars)
        if num_chars < self.num_chars:  # learned positions (transformer_lm) end at seq_len
            cut = {"num_chars": num_chars, "seq_len": model.seq_len, "asked": self.num_chars}
            print(SAMPLE_CUT_NOTE.format(**cut))
            if num_chars == 0:
                return
        # Decoded with its cache, as `paxtrain sample` does.
        ids = sample(model, prompt, num_chars, key, self.temperature)
        text = self.prompt + vocab.decode(ids)
        if not trainer.is_main_process:  # every process generates: the model may span them all
            return
        (trainer.run_dir / "sample.txt").write_text(text)
        print(f"--- sample (temperature {self.temperature}) ---\n{text}\n---")
