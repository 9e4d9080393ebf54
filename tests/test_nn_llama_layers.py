"""The pieces of a Llama block against independent references: RoPE against its complex-number
formula, grouped-query attention against NumPy with K/V heads repeated and against
`nn.MultiHeadAttention`, SwiGLU against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn


def numpy_rope(x: np.ndarray, positions: np.ndarray, theta: float = 10000.0) -> np.ndarray:
    """Each pair (x[i], x[i + d/2]) as the complex number x[i] + j x[i + d/2], multiplied by
    exp(j * position * theta ** (-2i / d))."""
    d = x.shape[-1]
    z = x[..., : d // 2] + 1j * x[..., d // 2 :]
    angles = positions[:, None] * theta ** (-np.arange(0, d, 2) / d)  # [time, d/2]
    z = z * np.exp(1j * angles)[None, :, None, :]
    return np.concatenate([z.real, z.imag], axis=-1)


def test_rope_is_the_complex_rotation_of_each_half_pair():
    x = np.random.default_rng(0).normal(size=(2, 7, 3, 8))
    positions = np.arange(7) + 3
    got = nn.apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions))
    np.testing.assert_allclose(got, numpy_rope(x, positions), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_on_the_distance_only():
    q, k = np.random.default_rng(1).normal(size=(2, 1, 1, 1, 16)).astype(np.float32)

    def score(m, n):
        rq = nn.apply_rope(jnp.asarray(q), jnp.array([m]))
        rk = nn.apply_rope(jnp.asarray(k), jnp.array([n]))
        return float(jnp.sum(rq * rk))

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def test_rope_refuses_an_odd_head_size():
    with pytest.raises(ValueError, match="must be even"):
        nn.apply_rope(jnp.ones((1, 2, 1, 5)), jnp.arange(2))


def numpy_gqa(attention: nn.GroupedQueryAttention, x: np.ndarray) -> np.ndarray:
    """Causal attention with each K/V head repeated for its group of query heads."""
    b, t, _ = x.shape
    h, kv, d = attention.num_heads, attention.num_kv_heads, attention.head_dim
    weights = {name: np.asarray(getattr(attention, name).weight) for name in
               ("query_proj", "key_proj", "value_proj", "output_proj")}  # fmt: skip
    q = (x @ weights["query_proj"]).reshape(b, t, h, d)
    k = (x @ weights["key_proj"]).reshape(b, t, kv, d)
    v = (x @ weights["value_proj"]).reshape(b, t, kv, d)
    if attention.rope_theta is not None:
        q, k = numpy_rope(q, np.arange(t)), numpy_rope(k, np.arange(t))
    k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h * d)
    return out @ weights["output_proj"]


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("rope_theta", [None, 10000.0])
def test_grouped_query_attention_matches_numpy(num_kv_heads, rope_theta):
    attention = nn.GroupedQueryAttention(
        16, num_heads=4, num_kv_heads=num_kv_heads, rope_theta=rope_theta,
        rng_key=jax.random.PRNGKey(0),
    )  # fmt: skip
    x = np.random.default_rng(2).normal(size=(2, 6, 16)).astype(np.float32)
    got = jax.jit(lambda a, x: a(x))(attention, jnp.asarray(x))
    np.testing.assert_allclose(got, numpy_gqa(attention, x), rtol=2e-4, atol=2e-5)


def test_grouped_query_attention_with_every_head_is_multi_head_attention():
    gqa = nn.GroupedQueryAttention(
        16, num_heads=4, num_kv_heads=4, rope_theta=None, rng_key=jax.random.PRNGKey(1)
    )
    mha = nn.MultiHeadAttention(4, 4, model_dim=16, causal=True)
    mha = mha.replace(**{name: getattr(mha, name).replace(weight=getattr(gqa, name).weight,
                                                          bias=jnp.zeros(16))
                         for name in ("query_proj", "key_proj", "value_proj", "output_proj")})  # fmt: skip
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 16))
    np.testing.assert_allclose(gqa(x), mha(x), rtol=1e-5, atol=1e-6)


def test_grouped_query_attention_refuses_heads_that_do_not_group():
    with pytest.raises(
        ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"
    ):
        nn.GroupedQueryAttention(16, num_heads=4, num_kv_heads=3)


def test_swiglu_matches_numpy():
    mlp = nn.SwiGLU(8, 12, rng_key=jax.random.PRNGKey(3))
    x = np.random.default_rng(4).normal(size=(5, 8)).astype(np.float32)
    gate, up = x @ np.asarray(mlp.gate_proj.weight), x @ np.asarray(mlp.up_proj.weight)
    expected = (gate / (1 + np.exp(-gate)) * up) @ np.asarray(mlp.down_proj.weight)
    np.testing.assert_allclose(mlp(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


def test_the_layers_are_pytrees_that_jit_and_grad_accept():
    attention = nn.GroupedQueryAttention(8, num_heads=2, num_kv_heads=1)
    grads = jax.grad(lambda a, x: a(x).sum())(attention, jnp.ones((1, 3, 8)))
    assert grads.key_proj.weight.shape == (8, 4)
    assert pax.select_parameters(attention).output_proj.weight.shape == (8, 8)
