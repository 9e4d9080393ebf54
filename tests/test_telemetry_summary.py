"""`Trainer.summary`'s numbers against independent references: GPT-2's published parameter count,
the FLOPs of the same transformer unscanned and scanned (and PaLM's formula), and the memory a
process really allocates for a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from paxtrain.data import CharCorpus
from paxtrain.parallel import seeded
from paxtrain.recipes.transformer_lm import TransformerLM
from paxtrain.telemetry.flops import count_jaxpr_flops, step_flops
from paxtrain.telemetry.parameters import count_parameters
from paxtrain.telemetry.summary import Summary
from paxtrain.train import Trainer
from paxtrain.train.trainer import model_loss

GPT2_SMALL = {"vocab_size": 50257, "seq_len": 1024, "num_layers": 12, "num_heads": 12,
              "model_dim": 768}  # fmt: skip
GPT2_SMALL_PARAMETERS = 124_439_808  # with the head tied to the token embedding (OpenAI's)


class TiedTransformerLM(TransformerLM):
    """The recipe's model with GPT-2's tied head: logits from the token embedding's transpose."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head = None

    def __call__(self, ids):
        x = self.token_embed(ids) + self.position_embed(jnp.arange(ids.shape[-1]))
        x = self.final_norm(self.blocks(x))
        return x @ self.token_embed.weight.T


def test_gpt2_small_has_its_published_parameter_count():
    tied = jax.eval_shape(seeded(lambda: TiedTransformerLM(**GPT2_SMALL), 0))
    assert count_parameters(tied) == GPT2_SMALL_PARAMETERS
    # The recipe's own head is untied and has a bias: one more 768 x 50257 matrix and 50257.
    untied = jax.eval_shape(seeded(lambda: TransformerLM(**GPT2_SMALL), 0))
    assert count_parameters(untied) == GPT2_SMALL_PARAMETERS + 768 * 50257 + 50257 == 163_087_441


SMALL = {"vocab_size": 98, "seq_len": 32, "num_layers": 4, "num_heads": 4, "model_dim": 64}
BATCH = {"inputs": jax.ShapeDtypeStruct((8, 32), jnp.int32),
         "targets": jax.ShapeDtypeStruct((8, 32), jnp.int32)}  # fmt: skip


def _abstract(**options):
    return jax.eval_shape(seeded(lambda: TransformerLM(**SMALL, **options), 0))


def test_scanned_and_unscanned_transformers_count_the_same_flops():
    unscanned = step_flops(model_loss, _abstract(), BATCH)
    scanned = step_flops(model_loss, _abstract(scan_layers=True), BATCH)
    assert scanned == pytest.approx(unscanned, rel=0.01)
    # PaLM's formula, an independent count: it also counts the biases and norms as matmul
    # parameters (6 FLOPs each per token), hence a looser tolerance.
    tokens = 8 * 32
    formula = _abstract().flops_per_token(32) * tokens
    assert unscanned == pytest.approx(formula, rel=0.03)

    # The trap the count avoids: XLA's cost analysis counts the scanned body once.
    def grads(model, batch):
        def loss(params):
            return model_loss(model.update_parameters(params), batch)[0]

        return jax.grad(loss)(model.parameters())

    lowered = jax.jit(grads).lower(_abstract(scan_layers=True), BATCH)
    assert lowered.cost_analysis()["flops"] < 0.6 * scanned


def test_remat_counts_the_recomputed_forward():
    plain = step_flops(model_loss, _abstract(scan_layers=True), BATCH)
    remat = step_flops(model_loss, _abstract(scan_layers=True, remat="full"), BATCH)
    assert plain < remat < 1.5 * plain


def test_a_scan_body_counts_length_times():
    def f(x, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=7)[0]

    jaxpr = jax.make_jaxpr(f)(jnp.ones((4, 8)), jnp.ones((8, 8)))
    assert count_jaxpr_flops(jaxpr) == 7 * 2 * 4 * 8 * 8


def test_summary_of_a_small_transformer():
    data = CharCorpus(seq_len=32, batch_size=8, max_chars=5000)
    summary = Trainer(10).summary(
        lambda: TransformerLM(data.info["vocab_size"], 32, 2, 2, 32), data, optax.adamw(1e-3)
    )
    assert isinstance(summary, Summary)
    params = summary.parameters
    assert params == count_parameters(jax.eval_shape(seeded(
        lambda: TransformerLM(data.info["vocab_size"], 32, 2, 2, 32), 0)))  # fmt: skip
    assert summary.state_bytes["parameters"] == 4 * params  # float32, one device
    assert summary.state_bytes["optimizer state"] >= 2 * 4 * params  # Adam's two moments
    assert summary.flops_source == "formula"
    assert summary.flops_per_token == TransformerLM(
        data.info["vocab_size"], 32, 2, 2, 32).flops_per_token(32)  # fmt: skip
    assert summary.fits and summary.verdict.startswith("fits: ")
    text = str(summary)
    assert f"TransformerLM: {params:,} parameters" in text
    assert "├── token_embed: Embed" in text and "memory: fits" in text


def test_the_verdict_names_the_fix_when_it_does_not_fit():
    summary = Summary(
        model="M", parameters=1, trainable=1, tree=(), layout="jit", flops_per_batch=1.0,
        flops_source="jaxpr", examples_per_batch=1, tokens_per_batch=0,
        state_bytes={"parameters": 4 << 30, "optimizer state": 8 << 30, "gradients": 4 << 30,
                     "other state": 0},
        step_bytes={"arguments": 12 << 30, "outputs": 0, "temporaries": 6 << 30},
        available_bytes=10 << 30, available_source="memory_stats()", fsdp_hint=4,
    )  # fmt: skip
    assert not summary.fits
    assert summary.verdict == (
        "will not fit: 18.00 GiB needed per device, 10.00 available (memory_stats()); try "
        "mesh.fsdp=4 or model.remat=full"
    )


MEASURE = """
import gc, json, jax, optax
from paxtrain.data import CharCorpus
from paxtrain.recipes.transformer_lm import TransformerLM
from paxtrain.telemetry.memory import host_peak_rss_bytes, host_rss_bytes, reset_host_peak
from paxtrain.train import Trainer, default_hooks
data = CharCorpus(seq_len=128, batch_size=16, max_chars=200000)
make = lambda: TransformerLM(data.info["vocab_size"], 128, num_layers=6, num_heads=6, model_dim=384)
trainer = Trainer(10, hooks=default_hooks(progress="off", plot=False), compile_cache=None)
summary = trainer.summary(make, data, optax.adamw(1e-3))
trainer.prepare(make, data, optax.adamw(1e-3))
batch = trainer.plan.put_batch(data.train_batch(0))
jax.block_until_ready(trainer.run_step(batch))  # compiles
gc.collect()
live = sum(x.nbytes for x in jax.live_arrays())
before = host_rss_bytes()
reset_host_peak()
jax.block_until_ready(trainer.run_step(batch))
print(json.dumps({"estimate": summary.needed_bytes, "live": live,
                  "step": host_peak_rss_bytes() - before}))
"""


@pytest.mark.slow
def test_the_memory_estimate_is_what_a_cpu_process_allocates():
    """A ~11M-parameter transformer (0.7 GB a step). Measured: the arrays alive between steps
    (`jax.live_arrays`: the state and the batch), plus what one step adds at its peak: the
    process's peak resident memory during a compiled step (VmHWM, reset before it through
    /proc/self/clear_refs) less its resident memory before. glibc's mmap threshold is fixed low
    so that freed temporaries return to the system instead of being reused unseen."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", MEASURE], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    measured = numbers["live"] + numbers["step"]
    assert measured > 0.5e9
    assert numbers["estimate"] == pytest.approx(measured, rel=0.2)


def test_the_fsdp_hint_is_the_smallest_split_that_fits():
    import types

    from paxtrain.telemetry.summary import _fsdp_hint

    gib = 1 << 30
    state = {"parameters": 4 * gib, "optimizer state": 8 * gib, "gradients": 4 * gib}
    mesh = types.SimpleNamespace(shape={"fsdp": 1}, size=8)
    # 18 GiB needed, 16 of them split by FSDP: fsdp=2 leaves 10, fsdp=4 leaves 6.
    assert _fsdp_hint(mesh, state, 18 * gib, 10 * gib) == 2
    assert _fsdp_hint(mesh, state, 18 * gib, 7 * gib) == 4
    assert _fsdp_hint(mesh, state, 18 * gib, 1 * gib) == 8  # none fits: every device


def test_memory_in_use_on_a_cpu_is_the_process_resident_memory():
    from paxtrain.telemetry.memory import GIB, host_rss_bytes, memory_in_use

    used = memory_in_use()
    assert used["memory_in_use_gib"] == pytest.approx(host_rss_bytes() / GIB, rel=0.1)
    assert used["memory_peak_gib"] >= used["memory_in_use_gib"] * 0.99
