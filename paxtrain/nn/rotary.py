"""Rotary position embeddings (RoPE, Su et al. 2021): positions as rotations of query/key pairs.

The pairs are the two halves of each head, `(x[i], x[i + d/2])`, rotated by the angle
`position * theta ** (-2i / d)`: the "rotate half" layout of Hugging Face's Llama and GPT-NeoX,
so that weights in that layout load without a permutation. A query at position m and a key at
position n then meet through `m - n` only.

Llama 3 stretches the low frequencies for long contexts (`Llama3RopeScaling`, Hugging Face's
`rope_type: llama3`); `rope_scaling` builds it from a config's `rope_scaling` mapping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

ODD_HEAD_MSG = "RoPE rotates pairs of features: the head size ({head_dim}) must be even."

ROPE_TYPE_MSG = """\
rope_scaling has rope_type {rope_type!r}, which paxtrain does not implement: it knows "default" \
(no scaling) and "llama3". Reading the weights with another rule would give a model that runs \
and is wrong at every position; use a checkpoint with one of those, or add the rule to \
paxtrain/nn/rotary.py."""

ROPE_SCALING_KEYS_MSG = """\
rope_scaling {{"rope_type": "llama3"}} needs the keys {needed}; it lacks {missing}."""


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3's rule for long contexts: frequencies whose wavelength exceeds
    `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those shorter
    than `... / high_freq_factor` are kept, and those between are interpolated smoothly.

    Example:
        >>> scaling = Llama3RopeScaling(8.0, 1.0, 4.0, 32)  # kept, smoothed, divided
        >>> [round(f, 5) for f in scaling(jnp.array([1.0, 0.5, 0.01])).tolist()]
        [1.0, 0.28803, 0.00125]
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __call__(self, inverse_frequencies: jax.Array) -> jax.Array:
        context = self.original_max_position_embeddings
        wavelengths = 2 * math.pi / inverse_frequencies
        scaled = jnp.where(
            wavelengths > context / self.low_freq_factor,
            inverse_frequencies / self.factor,
            inverse_frequencies,
        )
        smooth = (context / wavelengths - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelengths >= context / self.high_freq_factor) & (
            wavelengths <= context / self.low_freq_factor
        )
        return jnp.where(medium, smoothed, scaled)

    def as_config(self) -> dict[str, Any]:
        """The mapping `rope_scaling` reads back (Hugging Face's `rope_scaling` entry).

        Example:
            >>> Llama3RopeScaling(8.0, 1.0, 4.0, 8192).as_config()["rope_type"]
            'llama3'
        """
        return {"rope_type": "llama3", **dataclasses.asdict(self)}


def rope_scaling(config: Mapping[str, Any] | None) -> Llama3RopeScaling | None:
    """The scaling rule a config's `rope_scaling` mapping names (None or rope_type "default":
    none); any other rope_type is a ValueError, never ignored.

    Example:
        >>> rope_scaling({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        ...               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        Llama3RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, \
original_max_position_embeddings=8192)
        >>> rope_scaling({"rope_type": "yarn", "factor": 4.0})
        Traceback (most recent call last):
        ValueError: rope_scaling has rope_type 'yarn', which paxtrain does not implement: ...
    """
    if config is None:
        return None
    rope_type = config.get("rope_type", config.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise ValueError(" ".join(ROPE_TYPE_MSG.format(rope_type=rope_type).split()))
    needed = [field.name for field in dataclasses.fields(Llama3RopeScaling)]
    missing = [key for key in needed if key not in config]
    if missing:
        raise ValueError(ROPE_SCALING_KEYS_MSG.format(needed=needed, missing=missing))
    return Llama3RopeScaling(
        float(config["factor"]),
        float(config["low_freq_factor"]),
        float(config["high_freq_factor"]),
        int(config["original_max_position_embeddings"]),
    )


def rope_angles(
    positions: jax.Array,
    head_dim: int,
    theta: float = 10000.0,
    scaling: Llama3RopeScaling | None = None,
) -> jax.Array:
    """The rotation angles [..., head_dim // 2] of `positions` [...]: `p * theta**(-2i/d)`, the
    frequencies `theta**(-2i/d)` first rescaled by `scaling` when given.

    Example:
        >>> rope_angles(jnp.array([0, 1]), 4).tolist()
        [[0.0, 0.0], [1.0, 0.009999999776482582]]
    """
    if head_dim % 2:
        raise ValueError(ODD_HEAD_MSG.format(head_dim=head_dim))
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inverse_frequencies = 1.0 / (theta**exponents)
    if scaling is not None:
        inverse_frequencies = scaling(inverse_frequencies)
    return positions.astype(jnp.float32)[..., None] * inverse_frequencies


def apply_rope(
    x: jax.Array,
    positions: jax.Array,
    theta: float = 10000.0,
    scaling: Llama3RopeScaling | None = None,
) -> jax.Array:
    """Rotates `x` [batch, time, heads, head_dim] by the angles of `positions` [time] or
    [batch, time] (`rope_angles`); computed in float32, returned in `x`'s dtype.

    Example:
        >>> x = jnp.ones((1, 3, 2, 4))
        >>> y = apply_rope(x, jnp.arange(3))
        >>> bool(jnp.allclose(y[:, 0], x[:, 0]))  # position 0 is not rotated
        True
        >>> bool(jnp.allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1)))
        True
    """
    angles = rope_angles(positions, x.shape[-1], theta, scaling)[
        ..., None, :
    ]  # [(batch,) time, 1, d/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)
