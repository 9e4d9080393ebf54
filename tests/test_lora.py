"""LoRA layers (`paxtrain.nn.lora`): checked against NumPy, on plain and scanned layers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax
import paxtrain.nn as nn
from paxtrain.errors import ArgumentError
from paxtrain.recipes.llama_lm import LlamaLM

TINY_LLAMA = {"vocab_size": 40, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "model_dim": 16}
IDS = jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % 40


def with_random_b(model, seed=0):
    """`model` with every adapter's B drawn at random (B starts at zero: no effect to check)."""
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))

    def fill(module):
        if isinstance(module, nn.LoRAAdapter):
            b = 0.1 * jax.random.normal(next(keys), module.lora_b.shape)
            return module.replace(lora_b=b)
        return module

    return model.apply(fill)


def trainable_paths(model):
    params = pax.select_parameters(model)
    return sorted(jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))


def test_a_lora_linear_computes_x_w_plus_b_plus_the_scaled_low_rank_update():
    pax.seed_rng_key(0)
    base = nn.Linear(6, 5, rng_key=jax.random.PRNGKey(1))
    layer = with_random_b(nn.lora_linear(base, rank=3, alpha=6.0, rng_key=jax.random.PRNGKey(2)))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (4, 6)), np.float64)
    w, b = np.asarray(base.weight, np.float64), np.asarray(base.bias, np.float64)
    a, bb = (
        np.asarray(layer.adapter.lora_a, np.float64),
        np.asarray(layer.adapter.lora_b, np.float64),
    )
    expected = x @ w + b + (x @ a.T @ bb.T) * (6.0 / 3)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.merged()(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5)
    np.testing.assert_allclose(layer.merged().weight, w + (bb @ a).T * 2.0, rtol=1e-6)


def test_the_base_is_frozen_in_place_and_only_the_adapters_train():
    pax.seed_rng_key(0)
    model = LlamaLM(**TINY_LLAMA)
    adapted = nn.apply_lora(model, rank=2, alpha=4.0, paths=[r"query_proj$", r"value_proj$"])
    q = adapted.blocks.layers[1].attention.query_proj
    assert type(q).__name__ == "LoRALinear"
    # The base weight is the model's array itself, at the path it had: `init_from` finds it.
    assert q.weight is model.blocks.layers[1].attention.query_proj.weight
    assert trainable_paths(adapted) == [
        f".blocks.layers[{i}].attention.{name}.adapter.{ab}"
        for i in (0, 1)
        for name in ("query_proj", "value_proj")
        for ab in ("lora_a", "lora_b")
    ]
    grads = pax.grad(lambda m: m(IDS).sum())(with_random_b(adapted))
    assert all(g is not None for g in jax.tree_util.tree_leaves(grads))
    assert len(jax.tree_util.tree_leaves(grads)) == 8


def test_b_starts_at_zero_so_the_adapted_model_computes_the_base_exactly():
    pax.seed_rng_key(0)
    model = LlamaLM(**TINY_LLAMA)
    adapted = nn.apply_lora(model, rank=4, alpha=8.0, paths=["proj$"])  # all seven projections
    assert len(trainable_paths(adapted)) == 2 * 7 * 2
    np.testing.assert_array_equal(adapted(IDS), model(IDS))


def test_lora_a_is_initialized_as_peft_does_and_each_layer_differs():
    pax.seed_rng_key(0)
    adapted = nn.apply_lora(
        LlamaLM(**{**TINY_LLAMA, "model_dim": 64}), rank=8, alpha=16.0, paths=["query_proj$"]
    )
    a0 = adapted.blocks.layers[0].attention.query_proj.adapter.lora_a
    a1 = adapted.blocks.layers[1].attention.query_proj.adapter.lora_a
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on [rank, in]: U(-1/sqrt(in), ...)
    assert a0.shape == (8, 64) and float(jnp.abs(a0).max()) <= bound
    assert float(jnp.abs(a0).max()) > 0.9 * bound and abs(float(a0.mean())) < 0.1 * bound
    assert not np.array_equal(a0, a1)


def test_merged_and_unmerged_logits_match_and_merging_gives_plain_linears():
    pax.seed_rng_key(0)
    adapted = with_random_b(
        nn.apply_lora(LlamaLM(**TINY_LLAMA), rank=2, alpha=4.0, paths=["proj$"])
    )
    merged = nn.merge_lora(adapted)
    assert not any(isinstance(m, nn.LoRALinear) for m in merged.submodules())
    assert trainable_paths(merged) == trainable_paths(LlamaLM(**TINY_LLAMA))
    np.testing.assert_allclose(merged(IDS), adapted(IDS), atol=1e-5, rtol=1e-5)
    assert not np.allclose(adapted(IDS), nn.merge_lora(nn.apply_lora(
        LlamaLM(**TINY_LLAMA), rank=2, alpha=4.0, paths=["proj$"]))(IDS), atol=1e-3)  # fmt: skip


def test_scanned_layers_get_one_adapter_per_layer_and_compute_what_the_unstacked_blocks_do():
    pax.seed_rng_key(0)
    scanned = nn.apply_lora(
        LlamaLM(**TINY_LLAMA, scan_layers=True), rank=2, alpha=4.0, paths=["query_proj$"]
    )
    q = scanned.blocks.block.attention.query_proj
    assert q.weight.shape == (2, 16, 16)  # [depth, in, out], frozen
    assert q.adapter.lora_a.shape == (2, 2, 16) and q.adapter.lora_b.shape == (2, 16, 2)
    assert q.adapter.dropout.rng_key.shape == (2, 2)
    scanned = with_random_b(scanned)
    unstacked = scanned.replace(blocks=nn.Sequential(*scanned.blocks.unstack()))
    np.testing.assert_allclose(scanned(IDS), unstacked(IDS), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(nn.merge_lora(scanned)(IDS), scanned(IDS), atol=1e-5, rtol=1e-5)
    grads = pax.grad(lambda m: m(IDS).sum())(scanned)
    assert [g.shape for g in jax.tree_util.tree_leaves(grads)] == [(2, 2, 16), (2, 16, 2)]


def test_adapter_dropout_acts_in_training_only():
    pax.seed_rng_key(0)
    layer = with_random_b(nn.lora_linear(nn.Linear(8, 8), rank=2, alpha=2.0, dropout=0.5))
    plain = with_random_b(nn.lora_linear(nn.Linear(8, 8), rank=2, alpha=2.0))
    plain = plain.replace(weight=layer.weight, bias=layer.bias)
    plain = plain.replace(adapter=plain.adapter.replace(lora_a=layer.adapter.lora_a))
    plain = plain.replace(adapter=plain.adapter.replace(lora_b=layer.adapter.lora_b))
    x = jnp.ones((3, 8))
    np.testing.assert_array_equal(layer.eval()(x), plain(x))  # eval: deterministic, no dropout
    layer, first = pax.purecall(layer, x)
    layer, second = pax.purecall(layer, x)
    assert not np.allclose(first, plain(x)) and not np.allclose(first, second)


@pytest.mark.parametrize(
    "kwargs, argument, words",
    [
        ({"rank": 0}, "rank", "rank=0 must be at least 1 (the adapters' inner width); e.g. rank=8."),
        ({"rank": 20}, "rank", "`blocks.layers.0.attention.key_proj` is [16, 8], so its rank is at most 8"),
        ({"alpha": 0.0}, "alpha", "alpha=0.0 must be positive"),
        ({"dropout": 1.0}, "dropout", "dropout=1.0 must satisfy 0 <= dropout < 1"),
        ({"paths": []}, "paths", "`paths` is empty, so it selects no layer"),
        ({"paths": ["q_proj$"]}, "paths", "`paths` pattern 'q_proj$' matches no `Linear` of the model. The model's `Linear`s are: ['blocks.layers.0.attention.query_proj'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_naming_the_argument(kwargs, argument, words):
    pax.seed_rng_key(0)
    with pytest.raises(ArgumentError) as info:
        nn.apply_lora(
            LlamaLM(**TINY_LLAMA), **{"rank": 2, "alpha": 4.0, "paths": ["proj$"], **kwargs}
        )
    assert info.value.argument == argument
    assert words in str(info.value)
