"""A GPT-style character language model: a decoder-only transformer with pre-LayerNorm blocks.

    paxtrain fit transformer_lm    # from any directory: the config in paxtrain/configs/

Trains on the Python standard library's source by default (or `data.path=any.txt`), reports
bits per character on held-out text, and prints a sample at the end (`PrintSample` of the
char_rnn recipe, decoding with the KV cache of `decoder`, as `paxtrain sample` does).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.recipes.sampling import with_attention_caches

# GPT-2's initialization: embeddings and weights N(0, 0.02), and the projections that write into
# the residual stream scaled down by sqrt(2 * num_layers) so that its variance stays constant
# with depth (two residual additions per block).
INIT_STDDEV = 0.02

HEADS_MSG = """\
model_dim ({model_dim}) must be divisible by num_heads ({num_heads}): each head attends over \
model_dim / num_heads dimensions. Change `model.model_dim` or `model.num_heads`."""

TOO_LONG_MSG = """\
The input has {length} positions but the model has position embeddings for seq_len={seq_len}. \
Feed at most seq_len tokens, or build the model with a larger `seq_len`."""

DECODER_TOO_LONG_MSG = """\
A decoder of {max_len} positions (prompt plus new tokens) is longer than the seq_len={seq_len} \
position embeddings of the model: decode at most {seq_len} positions, e.g. fewer new tokens \
(`--max-new-tokens`)."""


class TransformerBlock(nn.Chainable, pax.Module):
    """`x + attention(norm(x))`, then `x + mlp(norm(x))`: causal self-attention and a GELU MLP.

    Args:
      model_dim: width of the residual stream.
      num_heads: attention heads, each of size `model_dim // num_heads`.
      mlp_ratio: hidden width of the MLP as a multiple of `model_dim`.
      dropout: dropout rate on the output of the attention and of the MLP.
      num_layers: depth of the whole model; scales the initial residual projections.
      norm_eps: epsilon of the two LayerNorms (GPT-2's `layer_norm_epsilon`).
      attention: `jax.nn.dot_product_attention`'s implementation: None or "xla" (XLA's fused
        attention, anywhere), "cudnn" (cuDNN flash attention: NVIDIA GPUs, 16-bit compute).

    Example:
        >>> block = TransformerBlock(model_dim=16, num_heads=2)
        >>> block(jnp.ones((8, 16, 16))).shape
        (8, 16, 16)
    """

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        num_layers: int = 1,
        norm_eps: float = 1e-5,
        *,
        attention: str | None = None,
    ):
        super().__init__()
        if model_dim % num_heads:
            raise ValueError(HEADS_MSG.format(model_dim=model_dim, num_heads=num_heads))
        self.model_dim, self.num_heads = model_dim, num_heads
        init = nn.initializers.truncated_normal(INIT_STDDEV)
        residual_init = nn.initializers.truncated_normal(INIT_STDDEV / math.sqrt(2 * num_layers))
        hidden = mlp_ratio * model_dim
        self.attention_norm = nn.LayerNorm(model_dim, eps=norm_eps)
        attention = nn.MultiHeadAttention(
            num_heads,
            model_dim // num_heads,
            model_dim=model_dim,
            causal=True,
            w_init=init,
            implementation=attention,
        )
        # Its output projection writes into the residual stream: it gets the scaled init.
        self.attention = attention.replace(
            output_proj=nn.Linear(model_dim, model_dim, w_init=residual_init)
        )
        self.attention_dropout = nn.Dropout(dropout)
        self.mlp_norm = nn.LayerNorm(model_dim, eps=norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(model_dim, hidden, w_init=init),
            jax.nn.gelu,
            nn.Linear(hidden, model_dim, w_init=residual_init),
            nn.Dropout(dropout),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention_dropout(self.attention(self.attention_norm(x)))
        return x + self.mlp(self.mlp_norm(x))


class TransformerLM(pax.Module):
    """Token and learned position embeddings, `num_layers` pre-LayerNorm `TransformerBlock`s,
    a final LayerNorm and a linear head to next-token logits (or, with `tie_embeddings`, the
    token embedding's transpose, without bias: GPT-2's head).

    Args:
      vocab_size: number of token ids (given by the data's `info`).
      seq_len: longest input, the number of position embeddings (given by the data's `info`).
      num_layers: number of blocks.
      num_heads: attention heads per block.
      model_dim: width of the residual stream.
      mlp_ratio: MLP width as a multiple of `model_dim`.
      dropout: dropout rate on the embeddings and inside each block.
      norm_eps: epsilon of every LayerNorm.
      tie_embeddings: the head is the token embedding's transpose (one matrix fewer, no bias).
      scan_layers: stack the blocks' parameters and run them under `lax.scan` over depth
        (`nn.ScanLayers`): compile time stays flat in depth; same outputs as the loop.
      remat: what `jax.checkpoint` keeps of each block for the backward pass: "none", "dots"
        (matmul results) or "full" (only the block's input): less memory, more compute.
      attention: the attention kernel, None/"xla" or "cudnn" (see `TransformerBlock`).

    GPT-2 small is `num_layers=12, num_heads=12, model_dim=768, seq_len=1024`.

    Example:
        >>> model = TransformerLM(vocab_size=98, seq_len=16, num_heads=2, model_dim=16)
        >>> model(jnp.zeros((8, 16), jnp.int32)).shape
        (8, 16, 98)
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        num_layers: int = 2,
        num_heads: int = 4,
        model_dim: int = 128,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = False,
        *,
        scan_layers: bool = False,
        remat: str = "none",
        attention: str | None = None,
    ):
        super().__init__()
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.num_layers, self.model_dim = num_layers, model_dim
        init = nn.initializers.truncated_normal(INIT_STDDEV)
        self.token_embed = nn.Embed(vocab_size, model_dim, w_init=init)
        self.position_embed = nn.Embed(seq_len, model_dim, w_init=init)
        self.embed_dropout = nn.Dropout(dropout)
        blocks = [
            TransformerBlock(
                model_dim, num_heads, mlp_ratio, dropout, num_layers, norm_eps, attention=attention
            )
            for _ in range(num_layers)
        ]
        self.remat = remat
        self.blocks = nn.ScanLayers(blocks, remat=remat) if scan_layers else nn.Sequential(*blocks)
        self.final_norm = nn.LayerNorm(model_dim, eps=norm_eps)
        self.head = None if tie_embeddings else nn.Linear(model_dim, vocab_size, w_init=init)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Logits [batch, time, vocab_size] of ids [batch, time], time <= seq_len; the logits
        at position t depend only on ids up to t."""
        length = ids.shape[-1]
        if length > self.seq_len:
            raise ValueError(TOO_LONG_MSG.format(length=length, seq_len=self.seq_len))
        positions = self._decoded_length() + jnp.arange(length)
        x = self.token_embed(ids) + self.position_embed(positions)
        x = self.embed_dropout(x)
        if isinstance(self.blocks, nn.ScanLayers) or self.remat == "none":
            x = self.blocks(x)
        else:  # each block of the loop under jax.checkpoint; its updated states kept
            blocks = []
            for block in self.blocks.layers:
                block, x = nn.call_block(block, x, self.remat)
                blocks.append(block)
            self.blocks = self.blocks.replace(layers=tuple(blocks))
        x = self.final_norm(x)
        return x @ self.token_embed.weight.T if self.head is None else self.head(x)

    def flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs per token of a training step on sequences of `seq_len` (PaLM's formula,
        `telemetry.flops.palm_flops_per_token`): `paxtrain summary` and `perf/mfu` use it.

        Example:
            >>> model = TransformerLM(vocab_size=98, seq_len=16, num_heads=2, model_dim=16)
            >>> model.flops_per_token(16)
            55692.0
        """
        from paxtrain.telemetry.flops import palm_flops_per_token
        from paxtrain.telemetry.parameters import count_parameters

        tables = count_parameters(self.token_embed) + count_parameters(self.position_embed)
        non_embedding = count_parameters(self) - tables
        if self.head is None:  # tied: the embedding's transpose, a d x vocab matmul all the same
            non_embedding += self.model_dim * self.vocab_size
        return palm_flops_per_token(non_embedding, self.num_layers, self.model_dim, seq_len)

    def loss(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean cross-entropy of the next character; also reported in bits per character."""
        logits = self(batch["inputs"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        return loss, {"bits_per_char": loss / math.log(2)}

    def decoder(self, batch_size: int, max_len: int) -> TransformerLM:
        """A copy for decoding (`paxtrain.recipes.sampling`): every attention keeps a KV cache
        of `max_len` positions (at most `seq_len`: the positions are learned), so each call
        continues the sequence of the calls before it.

        Example:
            >>> model = TransformerLM(vocab_size=98, seq_len=16, num_heads=2, model_dim=16)
            >>> decoder = model.decoder(batch_size=1, max_len=8)
            >>> decoder, logits = pax.purecall(decoder, jnp.array([[5, 6, 7]]))
            >>> decoder, logits = pax.purecall(decoder, jnp.array([[8]]))  # position 3
            >>> logits.shape
            (1, 1, 98)
        """
        # Past seq_len the position lookup would clamp its index: wrong logits, no error.
        if max_len > self.seq_len:
            raise ValueError(DECODER_TOO_LONG_MSG.format(max_len=max_len, seq_len=self.seq_len))
        blocks = with_attention_caches(self.blocks, batch_size, max_len)
        return self.replace(blocks=blocks, remat="none")  # nothing to keep for a backward pass

    def _decoded_length(self) -> jax.Array | int:
        """The position of the next id: 0, or in a decoder the positions its caches hold."""
        if isinstance(self.blocks, nn.ScanLayers):  # arrays stacked over depth, equal
            cache = self.blocks.block.attention.cache
            return 0 if cache is None else cache.length[0]
        cache = self.blocks.layers[0].attention.cache if self.blocks.layers else None
        return 0 if cache is None else cache.length
