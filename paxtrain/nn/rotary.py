"""Rotary position embeddings (RoPE, Su et al. 2021): positions as rotations of query/key pairs.

The pairs are the two halves of each head, `(x[i], x[i + d/2])`, rotated by the angle
`position * theta ** (-2i / d)`: the "rotate half" layout of Hugging Face's Llama and GPT-NeoX,
so that weights in that layout load without a permutation. A query at position m and a key at
position n then meet through `m - n` only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ODD_HEAD_MSG = "RoPE rotates pairs of features: the head size ({head_dim}) must be even."


def rope_angles(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> jax.Array:
    """The rotation angles [..., head_dim // 2] of `positions` [...]: `p * theta**(-2i/d)`.

    Example:
        >>> rope_angles(jnp.array([0, 1]), 4).tolist()
        [[0.0, 0.0], [1.0, 0.009999999776482582]]
    """
    if head_dim % 2:
        raise ValueError(ODD_HEAD_MSG.format(head_dim=head_dim))
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inverse_frequencies = 1.0 / (theta**exponents)
    return positions.astype(jnp.float32)[..., None] * inverse_frequencies


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotates `x` [batch, time, heads, head_dim] by the angles of `positions` [time] or
    [batch, time]; computed in float32, returned in `x`'s dtype.

    Example:
        >>> x = jnp.ones((1, 3, 2, 4))
        >>> y = apply_rope(x, jnp.arange(3))
        >>> bool(jnp.allclose(y[:, 0], x[:, 0]))  # position 0 is not rotated
        True
        >>> bool(jnp.allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1)))
        True
    """
    angles = rope_angles(positions, x.shape[-1], theta)[..., None, :]  # [(batch,) time, 1, d/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)
