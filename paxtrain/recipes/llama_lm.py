"""A Llama-style decoder-only language model: RMSNorm, rotary positions, SwiGLU, grouped-query
attention, optionally tied embeddings.

    paxtrain fit llama_lm    # from any directory: the config in paxtrain/configs/

Trains on the Python standard library's source by default (or `data.path=any.txt`, or a token
file), and reports bits per byte on held-out text, so that runs with different tokenizers
compare. The layout of its weights is Hugging Face's `LlamaForCausalLM` (rotate-half RoPE,
bias-free projections), so converted weights need no permutation.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.recipes.sampling import with_attention_caches

# Hugging Face Llama's `initializer_range`: every projection and the embedding N(0, 0.02).
INIT_STDDEV = 0.02


def default_mlp_dim(model_dim: int, multiple_of: int = 32) -> int:
    """Llama's hidden width: 2/3 of 4 * model_dim (the gate costs a third projection), rounded
    up to a multiple of `multiple_of`.

    Example:
        >>> default_mlp_dim(128), default_mlp_dim(4096, 256)
        (352, 11008)
    """
    hidden = int(2 * 4 * model_dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class LlamaBlock(nn.Chainable, pax.Module):
    """`x + attention(rms_norm(x))`, then `x + swiglu(rms_norm(x))`.

    Example:
        >>> block = LlamaBlock(model_dim=16, num_heads=4, num_kv_heads=2, mlp_dim=32)
        >>> block(jnp.ones((2, 8, 16))).shape
        (2, 8, 16)
    """

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        num_kv_heads: int,
        mlp_dim: int,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        *,
        rope_scaling: nn.Llama3RopeScaling | None = None,
        attention: str | None = None,
    ):
        super().__init__()
        init = nn.initializers.normal(INIT_STDDEV)
        self.attention_norm = nn.RMSNorm(model_dim, eps=norm_eps)
        self.attention = nn.GroupedQueryAttention(
            model_dim,
            num_heads,
            num_kv_heads,
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            w_init=init,
            implementation=attention,
        )
        self.mlp_norm = nn.RMSNorm(model_dim, eps=norm_eps)
        self.mlp = nn.SwiGLU(model_dim, mlp_dim, w_init=init)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class LlamaLM(pax.Module):
    """Token embedding, `num_layers` `LlamaBlock`s, a final RMSNorm and a bias-free head (or the
    embedding's transpose with `tie_embeddings`).

    Args:
      vocab_size: number of token ids (given by the data's `info`).
      num_layers: number of blocks.
      num_heads: query heads per block.
      num_kv_heads: key/value heads per block; divides `num_heads`.
      model_dim: width of the residual stream.
      mlp_dim: hidden width of the SwiGLU; None: `default_mlp_dim(model_dim)`.
      rope_theta: base of the rotary angles.
      rope_scaling: Hugging Face's `rope_scaling` mapping, e.g. Llama 3.1's `{rope_type: llama3,
        factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0,
        original_max_position_embeddings: 8192}` (see `nn.rope_scaling`); None: plain RoPE.
      norm_eps: epsilon of the RMSNorms.
      tie_embeddings: the head is the embedding's transpose (one matrix fewer).
      bytes_per_token: bytes of text per token of the data, for `bits_per_byte` (1 for the
        recipes' character vocabulary; given by the data's `info` when it knows better).
      scan_layers: blocks stacked and run under `lax.scan` over depth (see `TransformerLM`).
      remat: what `jax.checkpoint` keeps of each block: "none", "dots" or "full".
      attention: the attention kernel, None/"xla" or "cudnn".

    Example:
        >>> model = LlamaLM(vocab_size=98, num_heads=4, num_kv_heads=2, model_dim=16)
        >>> model(jnp.zeros((2, 8), jnp.int32)).shape
        (2, 8, 98)
    """

    def __init__(
        self,
        vocab_size: int,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        model_dim: int = 128,
        mlp_dim: int | None = None,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = False,
        bytes_per_token: float = 1.0,
        rope_scaling: dict[str, Any] | None = None,
        *,
        scan_layers: bool = False,
        remat: str = "none",
        attention: str | None = None,
    ):
        super().__init__()
        self.vocab_size, self.model_dim, self.num_layers = vocab_size, model_dim, num_layers
        self.bytes_per_token, self.remat = bytes_per_token, remat
        init = nn.initializers.normal(INIT_STDDEV)
        scaling = nn.rope_scaling(rope_scaling)  # an unknown rope_type: refused here
        self.token_embed = nn.Embed(vocab_size, model_dim, w_init=init)
        blocks = [
            LlamaBlock(
                model_dim,
                num_heads,
                num_kv_heads,
                mlp_dim or default_mlp_dim(model_dim),
                rope_theta,
                norm_eps,
                rope_scaling=scaling,
                attention=attention,
            )
            for _ in range(num_layers)
        ]
        self.blocks = nn.ScanLayers(blocks, remat=remat) if scan_layers else nn.Sequential(*blocks)
        self.final_norm = nn.RMSNorm(model_dim, eps=norm_eps)
        self.head = None if tie_embeddings else nn.Linear(model_dim, vocab_size, False, init)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Logits [batch, time, vocab_size] of ids [batch, time]; the logits at position t
        depend only on ids up to t."""
        x = self.token_embed(ids)
        if isinstance(self.blocks, nn.ScanLayers) or self.remat == "none":
            x = self.blocks(x)
        else:  # each block of the loop under jax.checkpoint
            blocks = []
            for block in self.blocks.layers:
                block, x = nn.call_block(block, x, self.remat)
                blocks.append(block)
            self.blocks = self.blocks.replace(layers=tuple(blocks))
        x = self.final_norm(x)
        return x @ self.token_embed.weight.T if self.head is None else self.head(x)

    def flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs per token of a training step on sequences of `seq_len` (PaLM's formula,
        `telemetry.flops.palm_flops_per_token`); a tied head is a matmul all the same.

        Example:
            >>> model = LlamaLM(vocab_size=98, num_heads=4, num_kv_heads=2, model_dim=16)
            >>> model.flops_per_token(8)
            59040.0
        """
        from paxtrain.telemetry.flops import palm_flops_per_token
        from paxtrain.telemetry.parameters import count_parameters

        non_embedding = count_parameters(self) - count_parameters(self.token_embed)
        if self.head is None:  # the embedding's transpose: a d x vocab matmul
            non_embedding += self.model_dim * self.vocab_size
        return palm_flops_per_token(non_embedding, self.num_layers, self.model_dim, seq_len)

    def decoder(self, batch_size: int, max_len: int) -> LlamaLM:
        """A copy for decoding (`paxtrain.recipes.sampling`): every attention keeps a KV cache
        of `max_len` positions, so each call continues the sequence of the calls before it.

        Example:
            >>> model = LlamaLM(vocab_size=98, num_heads=4, num_kv_heads=2, model_dim=16)
            >>> decoder = model.decoder(batch_size=1, max_len=8)
            >>> decoder, logits = pax.purecall(decoder, jnp.array([[5, 6, 7]]))
            >>> decoder, logits = pax.purecall(decoder, jnp.array([[8]]))  # position 3
            >>> logits.shape
            (1, 1, 98)
        """
        blocks = with_attention_caches(self.blocks, batch_size, max_len)
        return self.replace(blocks=blocks, remat="none")  # nothing to keep for a backward pass

    def loss(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean cross-entropy of the next token; also in bits per byte of text."""
        logits = self(batch["inputs"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        return loss, {"bits_per_byte": loss / math.log(2) / self.bytes_per_token}
