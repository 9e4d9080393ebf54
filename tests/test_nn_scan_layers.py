"""`nn.ScanLayers` and `nn.call_block`: stacked blocks under `lax.scan`, rematerialization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.recipes.transformer_lm import TransformerLM

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)


def blocks(n=3):
    return [nn.Linear(4, 4, rng_key=jax.random.key(i)) >> jnp.tanh for i in range(n)]


def output_sum(model, x):
    return jnp.sum(pax.purecall(model, x)[1] ** 2)


@pytest.mark.parametrize("remat", ["none", "dots", "full"])
def test_scanned_blocks_equal_the_blocks_applied_in_order(remat):
    layers = nn.ScanLayers(blocks(), remat=remat)
    expected = X
    for block in blocks():  # NumPy reference of each tanh(x @ w + b)
        w, b = np.asarray(block[0].weight), np.asarray(block[0].bias)
        expected = np.tanh(np.asarray(expected) @ w + b)
    np.testing.assert_allclose(pax.purecall(layers, X)[1], expected, rtol=1e-5, atol=1e-6)

    grads = pax.grad(output_sum)(layers, X)
    reference = [pax.grad(output_sum)(nn.Sequential(*blocks()), X).layers[i] for i in range(3)]
    np.testing.assert_allclose(
        grads.block[0].weight, np.stack([g[0].weight for g in reference]), rtol=1e-5, atol=1e-6
    )


def test_unstack_gives_the_blocks_back():
    layers = nn.ScanLayers(blocks())
    for block, original in zip(layers.unstack(), blocks(), strict=True):
        np.testing.assert_array_equal(block[0].weight, original[0].weight)


def test_blocks_of_different_structure_and_unknown_remat_are_refused():
    with pytest.raises(ValueError, match="Block 1 differs"):
        nn.ScanLayers([nn.Linear(4, 4), nn.Linear(4, 8)])
    with pytest.raises(ValueError, match="remat must be one of"):
        nn.ScanLayers(blocks(), remat="some")


def lm(**kwargs):
    pax.seed_rng_key(0)
    return TransformerLM(vocab_size=20, seq_len=8, num_layers=3, num_heads=2, model_dim=16,
                         dropout=0.1, **kwargs)  # fmt: skip


def lm_loss(model, batch):
    model, (loss, _) = pax.purecall(model.loss, batch)
    return loss, model


@pytest.mark.parametrize(
    "options", [{"scan_layers": True}, {"remat": "full"}, {"scan_layers": True, "remat": "dots"}]
)
def test_transformer_scanned_or_rematerialized_has_the_losses_and_gradients_of_the_loop(options):
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 20, (4, 8)))
    batch = {"inputs": ids, "targets": jnp.roll(ids, -1, axis=1)}
    # Under jit: two programs to compile instead of every layer's operations one by one.
    value_and_grad = jax.jit(pax.value_and_grad(lm_loss, has_aux=True))
    (loss, looped), grads = value_and_grad(lm(), batch)
    (other_loss, other), other_grads = value_and_grad(lm(**options), batch)
    assert float(other_loss) == pytest.approx(float(loss), rel=1e-6)  # dropout masks included
    if options.get("scan_layers"):
        other_grads = other_grads.replace(blocks=nn.Sequential(*other_grads.blocks.unstack()))
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(other_grads),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def _dot_count(num_layers, scan_layers):
    pax.seed_rng_key(0)
    model = TransformerLM(vocab_size=20, seq_len=8, num_layers=num_layers, num_heads=2,
                          model_dim=16, scan_layers=scan_layers)  # fmt: skip
    ids = jnp.zeros((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(pax.grad(lambda m, b: lm_loss(m, b)[0]))(
        model, {"inputs": ids, "targets": ids}
    )
    return str(jaxpr).count("dot_general")


def test_the_scanned_program_does_not_grow_with_depth():
    assert _dot_count(2, scan_layers=True) == _dot_count(6, scan_layers=True)
    assert _dot_count(6, scan_layers=False) > _dot_count(2, scan_layers=False)
