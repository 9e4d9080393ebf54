"""The Llama-style recipe: causal, scanned equals looped, tied embeddings share one matrix, it
learns, and its initialization is the documented N(0, 0.02)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paxtrain as pax
from paxtrain.recipes.llama_lm import LlamaLM, default_mlp_dim

TINY = {"vocab_size": 11, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "model_dim": 16}


def test_logits_at_a_position_depend_only_on_earlier_ids():
    model = LlamaLM(**TINY)
    ids = jax.random.randint(jax.random.PRNGKey(0), (1, 9), 0, 11)
    changed = ids.at[0, 6].set((ids[0, 6] + 1) % 11)
    a, b = jax.jit(jax.vmap(lambda ids: model(ids[None])[0]))(jnp.concatenate([ids, changed]))
    np.testing.assert_array_equal(a[:6], b[:6])
    assert not np.allclose(a[6:], b[6:])


def test_scanned_layers_give_the_loop_outputs_and_gradients():
    pax.seed_rng_key(1)
    looped = LlamaLM(**TINY)
    pax.seed_rng_key(1)
    scanned = LlamaLM(**TINY, scan_layers=True, remat="dots")
    batch = {"inputs": jnp.arange(16).reshape(2, 8) % 11, "targets": jnp.ones((2, 8), jnp.int32)}

    @jax.jit
    def loss_and_grads(model):
        return jax.value_and_grad(lambda m: pax.purecall(m.loss, batch)[1][0])(model)

    (loss_scan, grads_scan), (loss_loop, grads_loop) = map(loss_and_grads, (scanned, looped))
    np.testing.assert_allclose(loss_scan, loss_loop, rtol=1e-5)
    grads_loop = grads_loop.blocks.layers[1].mlp.down_proj.weight
    grads_scan = grads_scan.blocks.block.mlp.down_proj.weight[1]
    np.testing.assert_allclose(grads_scan, grads_loop, rtol=1e-4, atol=1e-7)


def test_tied_embeddings_drop_the_head_and_read_logits_from_the_embedding():
    def count(model):
        return sum(x.size for x in jax.tree_util.tree_leaves(pax.select_parameters(model)))

    untied, tied = LlamaLM(**TINY), LlamaLM(**TINY, tie_embeddings=True)
    assert count(untied) - count(tied) == 11 * 16

    @jax.jit
    def logits_both_ways(model, ids):
        x = model.final_norm(model.blocks(model.token_embed(ids)))
        return model(ids), x @ model.token_embed.weight.T

    np.testing.assert_allclose(*logits_both_ways(tied, jnp.array([[1, 2, 3]])), rtol=1e-6)


def test_parameter_count_is_llamas_formula():
    model = LlamaLM(vocab_size=100, num_layers=3, num_heads=4, num_kv_heads=2, model_dim=32)
    hidden, kv_width = default_mlp_dim(32), 2 * 8
    per_block = 32 * 32 * 2 + 32 * kv_width * 2 + 3 * 32 * hidden + 2 * 32  # q,o; k,v; mlp; norms
    expected = 100 * 32 + 3 * per_block + 32 + 32 * 100  # embedding, blocks, final norm, head
    assert sum(x.size for x in jax.tree_util.tree_leaves(model)) == expected


def test_every_projection_and_the_embedding_start_from_normal_0_02():
    model = LlamaLM(vocab_size=512, num_layers=1, num_heads=8, num_kv_heads=2, model_dim=256)
    for weight in (model.token_embed.weight, model.blocks.layers[0].attention.query_proj.weight,
                   model.blocks.layers[0].mlp.down_proj.weight):  # fmt: skip
        w = np.asarray(weight).ravel()
        assert abs(w.mean()) < 1e-3 and w.std() == pytest.approx(0.02, rel=0.02)
        kurtosis = np.mean((w - w.mean()) ** 4) / w.var() ** 2
        assert kurtosis == pytest.approx(3.0, abs=0.15)  # a normal, not a truncated normal


def test_bits_per_byte_divides_bits_per_token_by_the_bytes_a_token_spans():
    batch = {"inputs": jnp.zeros((2, 4), jnp.int32), "targets": jnp.ones((2, 4), jnp.int32)}
    loss, metrics = jax.jit(lambda m: m.loss(batch))(LlamaLM(**TINY, bytes_per_token=4.0))
    assert float(metrics["bits_per_byte"]) == pytest.approx(float(loss) / np.log(2) / 4.0)


def test_it_learns_a_repeating_sequence():
    model = LlamaLM(**TINY)
    ids = jnp.tile(jnp.arange(11), 4)[None, :33]
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
    tx = optax.adam(1e-2)
    state = tx.init(pax.select_parameters(model))

    @jax.jit
    def step(model, state):
        loss, grads = pax.value_and_grad(lambda m: m.loss(batch)[0])(model)
        updates, state = tx.update(grads, state)
        params = optax.apply_updates(pax.select_parameters(model), updates)
        return pax.update_parameters(model, params), state, loss

    losses = []
    for _ in range(60):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert losses[0] > 2.0 and losses[-1] < 0.1
