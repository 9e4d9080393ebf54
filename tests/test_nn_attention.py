"""MultiHeadAttention against a NumPy reference; causal and explicit masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _numpy_attention(mha, query, key, mask=None):
    def project(linear, x, size):
        y = x @ np.asarray(linear.weight) + np.asarray(linear.bias)
        return y.reshape(*x.shape[:-1], mha.num_heads, size)

    q = project(mha.query_proj, query, mha.key_size)
    k = project(mha.key_proj, key, mha.key_size)
    v = project(mha.value_proj, key, mha.value_size)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(mha.key_size)
    if mask is not None:
        logits = np.where(mask, logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", weights, v).reshape(*query.shape[:-1], -1)
    return out @ np.asarray(mha.output_proj.weight) + np.asarray(mha.output_proj.bias)


def _mha(**kwargs):
    mha = nn.MultiHeadAttention(num_heads=2, key_size=3, model_dim=4, value_size=5, **kwargs)
    # Nonzero biases, so that a wrong bias placement shows up.
    return jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.asarray(_randn(*p.shape)), mha)


def test_self_attention_matches_numpy_under_jit():
    mha = _mha()
    x = _randn(2, 6, 4)
    np.testing.assert_allclose(
        jax.jit(lambda m, x: m(x))(mha, x), _numpy_attention(mha, x, x), rtol=1e-4, atol=1e-5
    )


def test_cross_attention_with_an_explicit_mask():
    mha = _mha()
    query, memory = _randn(2, 3, 4), _randn(2, 5, 4)
    mask = RNG.random((2, 1, 3, 5)) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    np.testing.assert_allclose(
        mha(query, memory, mask=mask),
        _numpy_attention(mha, query, memory, mask),
        rtol=1e-4,
        atol=1e-5,
    )


def test_causal_output_does_not_depend_on_future_tokens():
    mha = _mha(causal=True)
    x = _randn(1, 6, 4)
    y = mha(x)
    causal = np.tril(np.ones((6, 6), bool))
    np.testing.assert_allclose(y, _numpy_attention(mha, x, x, causal), rtol=1e-4, atol=1e-5)
    for t in range(5):
        perturbed = x.copy()
        perturbed[:, t + 1 :] += 10 * _randn(1, 5 - t, 4)
        y_perturbed = mha(perturbed)
        np.testing.assert_allclose(y_perturbed[:, : t + 1], y[:, : t + 1], rtol=1e-5, atol=1e-6)
        assert not np.allclose(y_perturbed[:, t + 1 :], y[:, t + 1 :])


def test_causal_combines_with_an_explicit_mask():
    mha = _mha(causal=True)
    x = _randn(1, 4, 4)
    padding = np.array([True, True, False, True])  # hide key 2 from every query
    expected = _numpy_attention(mha, x, x, np.tril(np.ones((4, 4), bool)) & padding)
    np.testing.assert_allclose(mha(x, mask=jnp.asarray(padding)), expected, rtol=1e-4, atol=1e-5)


def _dot_dtypes(jaxpr) -> list[tuple[str, ...]]:
    """(lhs, rhs, output) dtypes of every matmul in `jaxpr`, sub-jaxprs (pjit, vmap...) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars)))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                found.extend(_dot_dtypes(inner))
    return found


def test_bfloat16_compute_feeds_every_matmul_bfloat16_operands():
    """Under a bf16 policy every matmul reads bf16 operands (the tensor-core path). The
    projections also write bf16; `jax.nn.dot_product_attention` accumulates the logits in f32
    and runs the softmax in f32 (its choice, for accuracy), then casts the weights back to bf16."""
    mha = nn.MultiHeadAttention(2, 4, model_dim=8, causal=True, rng_key=jax.random.PRNGKey(0))
    mha = pax.apply_mp_policy(mha, "params=float32,compute=bfloat16,output=float32")
    closed = jax.make_jaxpr(lambda m, x: m(x))(mha, jnp.ones((1, 5, 8)))
    dtypes = _dot_dtypes(closed.jaxpr)
    assert len(dtypes) == 6  # q, k, v, output projections and the two attention products
    assert {lhs for lhs, _, _ in dtypes} == {rhs for _, rhs, _ in dtypes} == {"bfloat16"}
    assert [out for _, _, out in dtypes].count("float32") == 1  # the logits only


def _einsum_attention(q, k, v, mask, scale):
    """The textbook computation in the inputs' dtype: [b, t, h, d] heads."""
    logits = jnp.einsum("bthd,bshd->bhts", q, k) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


@pytest.mark.parametrize(("dtype", "tol"), [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_fused_attention_matches_an_einsum_reference(dtype, tol):
    """The layer's attention (jax.nn.dot_product_attention, is_causal) against einsums."""
    mha = nn.MultiHeadAttention(2, 4, model_dim=8, causal=True, rng_key=jax.random.PRNGKey(1))
    policy = pax.MpPolicy(compute_dtype=dtype)
    mha_mp = pax.apply_mp_policy(mha, policy)
    x = jnp.asarray(_randn(2, 7, 8))
    got = mha_mp(x)

    xc = x.astype(dtype)
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), mha)

    def heads(linear):
        return (xc @ linear.weight + linear.bias).reshape(2, 7, 2, 4)

    causal = np.tril(np.ones((7, 7), bool))
    out = _einsum_attention(
        heads(params.query_proj), heads(params.key_proj), heads(params.value_proj), causal, 0.5
    ).reshape(2, 7, 8)
    expected = out @ params.output_proj.weight + params.output_proj.bias
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected.astype(jnp.float32), rtol=tol, atol=tol)


def test_an_attention_implementation_the_backend_lacks_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"'cudnn'.*needs an NVIDIA GPU.*runs on cpu.*'xla'"):
        nn.MultiHeadAttention(2, 4, implementation="cudnn")
    with pytest.raises(ValueError, match=r"implementation='flash': choose None"):
        nn.MultiHeadAttention(2, 4, implementation="flash")
    nn.MultiHeadAttention(2, 4, implementation="xla")


@pytest.mark.parametrize("causal", [True, False])
def test_decoding_with_a_cache_matches_numpy_over_the_positions_so_far(causal):
    mha, x = _mha(causal=causal), _randn(2, 7, 4)  # key size 3, value size 5: padded heads
    decoder, outputs = mha.with_cache(batch_size=2, max_len=7), []
    for chunk in (x[:, :3], x[:, 3:4], x[:, 4:6], x[:, 6:]):  # a prompt, then 1 or 2 positions
        decoder, y = jax.jit(pax.purecall)(decoder, chunk)
        outputs.append(y)
        seen = decoder.cache.length
        # Each new position attends to every earlier one (and, non-causal, to its chunk).
        mask = np.tril(np.ones((seen, seen), bool)) if causal else np.ones((seen, seen), bool)
        expected = _numpy_attention(mha, x[:, :seen], x[:, :seen], mask)[:, -chunk.shape[1] :]
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    if causal:  # the whole sequence at once, without a cache
        np.testing.assert_allclose(np.concatenate(outputs, 1), mha(x), rtol=1e-4, atol=1e-5)


def test_a_cache_is_self_attention_only_and_shows_only_when_present():
    mha = nn.MultiHeadAttention(2, 4, causal=True)
    decoder = mha.with_cache(batch_size=1, max_len=4)
    assert repr(mha) == (
        "MultiHeadAttention(num_heads=2, key_size=4, value_size=4, model_dim=8, causal=True, "
        "implementation=None)"
    )
    assert len(jax.tree_util.tree_leaves(mha)) == 8  # weights and biases: no cache arrays
    assert decoder.cache.keys.shape == (1, 4, 2, 4) and "KVCache" in decoder.summary()
    x = jnp.ones((1, 2, 8))
    for kwargs in ({"key": x}, {"value": x}, {"mask": jnp.ones((2, 2), bool)}):
        with pytest.raises(ValueError, match="with a KV cache .* call it with the query only"):
            pax.purecall(decoder, x, **kwargs)
