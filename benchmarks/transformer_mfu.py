"""GPT-2-small training throughput and MFU: the `transformer_lm` recipe against raw JAX.

Run: `python benchmarks/transformer_mfu.py [--batch 8] [--precision bfloat16]` on a GPU
(`--quick` for a tiny smoke run that writes nothing).

The recipe's `TransformerLM` (12 layers, 12 heads, d_model 768, 1024 positions, a vocabulary
of 50,257 padded to 50,304 so the head's matmul tiles evenly; untied input and output
embeddings, as the recipe builds them) is trained by `paxtrain.train.make_train_step`, and the
same model written here as nested dicts of arrays by a `jax.jit` step with donated buffers.
Both use `optax.adamw` on one batch of random token ids (speed, not learning, is measured) and
run interleaved in one process. With `--precision bfloat16`, paxtrain uses the mixed-precision
policy the `Trainer` applies (float32 parameters, bfloat16 compute, float32 logits) and raw JAX
casts its parameters to bfloat16 inside the loss.

Before timing, the two must compute the same thing, or the script stops with an error: the same
logits for one sequence from the same parameters (the recipe's initial ones, copied into the
dicts), then the same losses over two training steps. A difference in the dtypes of their
forward matmuls is reported under the table as a warning.

FLOPs per token are PaLM's (Chowdhery et al., 2022, appendix B), as paxtrain's `perf/mfu` counts
them (`telemetry.flops.palm_flops_per_token`): `6 * N + 12 * L * H * Q * T`, with N the
parameters *excluding the token and position embedding tables* (lookups, no matmul) but
including the untied output head (a d_model x vocab matmul), L layers, H heads of size Q and T
positions. The attention term counts the whole T x T score matrix, as the model computes it
(the causal mask hides half of it but does not skip it). MFU = tokens/s * FLOPs per token /
peak FLOP/s of the device, from paxtrain's table by `device_kind` (`telemetry.peak_flops`;
bfloat16: dense tensor-core peak; float32: dense TF32 peak, which is what XLA uses for float32
matmuls on these GPUs), or `--peak-tflops`; "n/a" on CPU and on devices not in the table.
Writes a section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from report import machine_line, section_title, write_section
from timing import interleaved

import paxtrain as pax
from paxtrain.recipes.transformer_lm import TransformerLM
from paxtrain.telemetry.flops import palm_flops_per_token
from paxtrain.telemetry.peak_flops import peak_flops
from paxtrain.train import TrainState, make_train_step
from paxtrain.train.trainer import model_loss

# The `Trainer`'s policy for `precision="bfloat16"`.
MP_POLICY = "params=float32,compute=bfloat16,output=float32"
LEARNING_RATE = 3e-4
# Tolerances of the checks: the same computation may still be fused and reduced in another
# order, which bfloat16 (and TF32 on GPUs) makes visible. A real difference is larger: without
# the causal mask, the logits' relative error is 0.14 (tiny model) to 0.36 (GPT-2 small).
LOGITS_RTOL = {"float32": 1e-2, "bfloat16": 5e-2}
LOSS_RTOL = {"float32": 1e-4, "bfloat16": 5e-3}

LOSS_MISMATCH_MSG = """\
The training steps of paxtrain and raw JAX disagree: from the same parameters and batch, the
losses of two steps differ beyond rtol={rtol} ({precision}):
  paxtrain: {pax}
  raw JAX:  {raw}
The logits matched, so the loss, the gradients or the update differ: make `raw_loss` and
`raw_runner` in benchmarks/transformer_mfu.py do what the recipe's `loss` and `paxtrain_runner`
do, or the timings compare different steps."""

LOGITS_MISMATCH_MSG = """\
paxtrain and raw JAX do not compute the same model: from the same parameters and token ids,
their logits differ by {error:.3g} (relative norm of the difference; tolerance {rtol},
{precision}). The timings would compare different models. Make `raw_forward` in
benchmarks/transformer_mfu.py do what paxtrain/recipes/transformer_lm.py does."""

SHAPES_MISMATCH_MSG = """\
The recipe's parameters do not have the shapes that `init_params` gives the raw-JAX model:
  recipe:  {recipe}
  raw JAX: {raw}
paxtrain/recipes/transformer_lm.py has changed; update `init_params` and `params_from_recipe`."""

MATMUL_DTYPES_MSG = """\
warning: the timings compare different computations; the forward matmuls' output dtypes are
  paxtrain: {pax}
  raw JAX:  {raw}
Under a bfloat16 policy, an operation inside the model that promotes to float32 (such as
dividing by a NumPy float64 scalar like `np.sqrt(key_size)`) makes everything after it float32."""


class ModelSize(NamedTuple):
    num_layers: int
    num_heads: int
    model_dim: int
    seq_len: int
    vocab_size: int  # the model's, padded to a multiple of 64
    data_vocab: int  # token ids are drawn from [0, data_vocab)


GPT2_SMALL = ModelSize(12, 12, 768, 1024, 50304, 50257)
TINY = ModelSize(2, 4, 64, 64, 256, 256)


# ------------------------------------------------------------------------------ paxtrain
def recipe_model(
    size: ModelSize, precision: str, scan_layers: bool = False, attention: str | None = None
) -> pax.Module:
    """The recipe's `TransformerLM` of `size`, under the `Trainer`'s policy for `precision`
    (its blocks under `lax.scan` with `scan_layers`; `attention` names the kernel).

    Example:
        >>> recipe_model(TINY, "bfloat16").num_layers  # doctest: +SKIP
        2
    """
    pax.seed_rng_key(0)
    model = TransformerLM(
        size.vocab_size, size.seq_len, size.num_layers, size.num_heads, size.model_dim,
        scan_layers=scan_layers, attention=attention,
    )  # fmt: skip
    return pax.apply_mp_policy(model, MP_POLICY) if precision == "bfloat16" else model


def paxtrain_runner(model: pax.Module, batch: dict[str, jax.Array]) -> Callable[[], jax.Array]:
    """One `make_train_step` step per call (without the non-finite guard, which raw JAX lacks);
    returns the loss.

    Example:
        >>> run = paxtrain_runner(recipe_model(TINY, "float32"), make_batch(TINY, 4))
        >>> float(run()) > 0  # doctest: +SKIP
        True
    """
    step = make_train_step(model_loss, nonfinite_guard=False)
    holder = [TrainState.create(model, optax.adamw(LEARNING_RATE), seed=0)]

    def run() -> jax.Array:
        holder[0], metrics = step(holder[0], batch)
        return metrics["loss"]

    return run


# ------------------------------------------------------------------------------- raw JAX
def init_params(key: jax.Array, size: ModelSize) -> dict[str, Any]:
    """GPT-2's initialization, as the recipe does it: N(0, 0.02) truncated at two standard
    deviations, residual projections scaled by 1 / sqrt(2 * num_layers), zero biases.

    Example:
        >>> init_params(jax.random.PRNGKey(0), TINY)["head"]["weight"].shape
        (64, 256)
    """
    dim, hidden = size.model_dim, 4 * size.model_dim
    normal = jax.nn.initializers.truncated_normal(0.02)
    residual = jax.nn.initializers.truncated_normal(0.02 / math.sqrt(2 * size.num_layers))
    keys = iter(jax.random.split(key, 3 + 6 * size.num_layers))

    def linear(n_in, n_out, init=normal):
        return {"weight": init(next(keys), (n_in, n_out)), "bias": jnp.zeros(n_out)}

    def norm():
        return {"scale": jnp.ones(dim), "offset": jnp.zeros(dim)}

    blocks = [
        {
            "attention_norm": norm(),
            "query": linear(dim, dim),
            "key": linear(dim, dim),
            "value": linear(dim, dim),
            "output": linear(dim, dim, residual),
            "mlp_norm": norm(),
            "mlp_in": linear(dim, hidden),
            "mlp_out": linear(hidden, dim, residual),
        }
        for _ in range(size.num_layers)
    ]
    return {
        "token_embed": normal(next(keys), (size.vocab_size, dim)),
        "position_embed": normal(next(keys), (size.seq_len, dim)),
        "blocks": blocks,
        "final_norm": norm(),
        "head": linear(dim, size.vocab_size),
    }


def params_from_recipe(model: pax.Module, like: dict[str, Any]) -> dict[str, Any]:
    """Copies of the recipe model's parameters in the layout of `like` (checked).

    Copies, because paxtrain's step donates the model's buffers.

    Example:
        >>> params = params_from_recipe(model, init_params(key, TINY))  # doctest: +SKIP
    """

    def linear(layer):
        return {"weight": layer.weight, "bias": layer.bias}

    def norm(layer):
        return {"scale": layer.scale, "offset": layer.offset}

    blocks = [
        {
            "attention_norm": norm(block.attention_norm),
            "query": linear(block.attention.query_proj),
            "key": linear(block.attention.key_proj),
            "value": linear(block.attention.value_proj),
            "output": linear(block.attention.output_proj),
            "mlp_norm": norm(block.mlp_norm),
            "mlp_in": linear(block.mlp.layers[0]),
            "mlp_out": linear(block.mlp.layers[2]),
        }
        for block in getattr(model.blocks, "layers", None) or model.blocks.unstack()
    ]
    params = {
        "token_embed": model.token_embed.weight,
        "position_embed": model.position_embed.weight,
        "blocks": blocks,
        "final_norm": norm(model.final_norm),
        "head": linear(model.head),
    }
    shapes = [jax.tree.map(jnp.shape, tree) for tree in (params, like)]
    if shapes[0] != shapes[1]:
        raise ValueError(SHAPES_MISMATCH_MSG.format(recipe=shapes[0], raw=shapes[1]))
    return jax.tree.map(jnp.copy, params)


def layer_norm(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, -1, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(variance + 1e-5) * p["scale"] + p["offset"]


def linear(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["weight"] + p["bias"]


def causal_attention(
    p: dict[str, Any], x: jax.Array, num_heads: int, attention: str = "xla"
) -> jax.Array:
    batch, time, dim = x.shape
    q, k, v = (
        linear(p[name], x).reshape(batch, time, num_heads, dim // num_heads)
        for name in ("query", "key", "value")
    )
    # What a raw-JAX user writes today: JAX's fused attention (cuDNN flash attention on GPUs).
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=attention)
    return linear(p["output"], out.reshape(batch, time, dim))


def raw_forward(
    params: dict[str, Any], ids: jax.Array, num_heads: int, attention: str = "xla"
) -> jax.Array:
    """Logits [batch, time, vocab] of ids [batch, time]: pre-LN blocks, a final LayerNorm and
    an untied linear head.

    Example:
        >>> params = init_params(jax.random.PRNGKey(0), TINY)
        >>> raw_forward(params, jnp.zeros((2, 8), jnp.int32), TINY.num_heads).shape
        (2, 8, 256)
    """
    x = params["token_embed"][ids] + params["position_embed"][: ids.shape[-1]]
    for p in params["blocks"]:
        x = x + causal_attention(p, layer_norm(p["attention_norm"], x), num_heads, attention)
        x = x + linear(p["mlp_out"], jax.nn.gelu(linear(p["mlp_in"], layer_norm(p["mlp_norm"], x))))
    return linear(params["head"], layer_norm(params["final_norm"], x))


def raw_loss(
    params: dict[str, Any],
    batch: dict[str, jax.Array],
    num_heads: int,
    compute_dtype: Any,
    attention: str = "xla",
) -> jax.Array:
    """Mean next-token cross-entropy, computed in `compute_dtype`, on float32 logits."""
    params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    logits = raw_forward(params, batch["inputs"], num_heads, attention).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()


def raw_runner(
    params: dict[str, Any],
    batch: dict[str, jax.Array],
    num_heads: int,
    precision: str,
    attention: str = "xla",
) -> Callable[[], jax.Array]:
    """One jitted adamw step per call, parameters and optimizer state donated; returns the loss.

    Example:
        >>> params = init_params(jax.random.PRNGKey(0), TINY)
        >>> run = raw_runner(params, make_batch(TINY, 4), TINY.num_heads, "float32")
        >>> float(run()) > 0  # doctest: +SKIP
        True
    """
    tx = optax.adamw(LEARNING_RATE)
    compute_dtype = jnp.dtype(precision)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(raw_loss)(
            params, batch, num_heads, compute_dtype, attention
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    holder = [params, tx.init(params)]

    def run() -> jax.Array:
        holder[0], holder[1], loss = step(holder[0], holder[1], batch)
        return loss

    return run


# ------------------------------------------------------------------------------ measuring
def make_batch(size: ModelSize, batch_size: int) -> dict[str, jax.Array]:
    """Random token ids: `inputs` and the next-token `targets`, [batch_size, seq_len] each.

    Example:
        >>> make_batch(TINY, 4)["inputs"].shape
        (4, 64)
    """
    rng = np.random.default_rng(0)
    ids = rng.integers(0, size.data_vocab, size=(batch_size, size.seq_len + 1), dtype=np.int32)
    return {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:])}


def non_embedding_params(params: dict[str, Any]) -> int:
    """Parameters outside the token and position embedding tables (those are lookups).

    Example:
        >>> non_embedding_params(init_params(jax.random.PRNGKey(0), GPT2_SMALL))  # doctest: +SKIP
        123739776
    """
    total = sum(p.size for p in jax.tree.leaves(params))
    return total - params["token_embed"].size - params["position_embed"].size


def matmul_dtypes(fn: Callable, *args: Any) -> Counter[str]:
    """Counts the output dtypes of the matrix multiplications (`dot_general`) in `fn(*args)`;
    those inside a `scan` body count once per iteration.

    Example:
        >>> matmul_dtypes(lambda a: a @ a, jnp.ones((2, 2)))
        Counter({'float32': 1})
    """
    counts: Counter[str] = Counter()

    def visit(jaxpr, times: int) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                counts[eqn.outvars[0].aval.dtype.name] += times
            inner_times = (
                times * eqn.params.get("length", 1) if eqn.primitive.name == "scan" else times
            )
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                    if hasattr(inner, "eqns"):
                        visit(inner, inner_times)

    visit(jax.make_jaxpr(fn)(*args).jaxpr, 1)
    return counts


def check_same_model(
    model: pax.Module, params: dict[str, Any], ids: jax.Array, num_heads: int, precision: str
) -> str:
    """Raises unless both models give the same logits for `ids`; returns a warning (or "")
    when their forward matmuls run in different dtypes.

    Logits discriminate where losses at initialization cannot: those are all near
    log(vocab_size) whatever the model does.

    Example:
        >>> check_same_model(model, params, batch["inputs"][:1], 12, "float32")  # doctest: +SKIP
        ''
    """
    compute_dtype = jnp.dtype(precision)

    def raw_logits(params, ids):
        params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
        return raw_forward(params, ids, num_heads).astype(jnp.float32)

    def pax_logits(model, ids):
        return model(ids)

    expected, got = jax.jit(pax_logits)(model, ids), jax.jit(raw_logits)(params, ids)
    error = float(jnp.linalg.norm(got - expected) / jnp.linalg.norm(expected))
    if not error <= LOGITS_RTOL[precision]:
        raise AssertionError(
            LOGITS_MISMATCH_MSG.format(
                error=error, rtol=LOGITS_RTOL[precision], precision=precision
            )
        )
    pax_dtypes = matmul_dtypes(pax_logits, model, ids)
    raw_dtypes = matmul_dtypes(raw_logits, params, ids)
    if pax_dtypes == raw_dtypes:
        return ""
    return MATMUL_DTYPES_MSG.format(pax=dict(pax_dtypes), raw=dict(raw_dtypes))


def check_same_steps(runners: dict[str, Callable[[], jax.Array]], precision: str) -> None:
    """Takes two steps with each runner and raises unless their losses agree: the second
    loss also depends on the gradients and the adamw update of the first step.

    Example:
        >>> check_same_steps({"paxtrain": run_pax, "raw JAX": run_raw}, "float32")  # doctest: +SKIP
    """
    losses = {name: [float(run()) for _ in range(2)] for name, run in runners.items()}
    pax_losses, raw_losses = losses["paxtrain"], losses["raw JAX"]
    if not np.allclose(pax_losses, raw_losses, rtol=LOSS_RTOL[precision], atol=0.0):
        raise AssertionError(
            LOSS_MISMATCH_MSG.format(
                rtol=LOSS_RTOL[precision], precision=precision, pax=pax_losses, raw=raw_losses
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, for the MFU")
    parser.add_argument(
        "--scan-layers", action="store_true", help="the recipe's blocks under lax.scan"
    )
    parser.add_argument(
        "--attention", choices=("xla", "cudnn"), default="xla",
        help="jax.nn.dot_product_attention's implementation, for both (cudnn: NVIDIA GPUs)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model, batch 4, few steps; writes nothing"
    )
    args = parser.parse_args()
    size, batch_size = (TINY, 4) if args.quick else (GPT2_SMALL, args.batch)
    rounds, steps = (2, 3) if args.quick else (5, 10)

    batch = make_batch(size, batch_size)
    model = recipe_model(size, args.precision, args.scan_layers, args.attention)
    params = params_from_recipe(model, init_params(jax.random.PRNGKey(0), size))
    # One sequence is enough, and keeps GPT-2's float32 logits at 200 MB.
    warning = check_same_model(model, params, batch["inputs"][:1], size.num_heads, args.precision)
    runners = {
        "raw JAX": raw_runner(params, batch, size.num_heads, args.precision, args.attention),
        "paxtrain": paxtrain_runner(model, batch),
    }
    # Before the steps donate (delete) the parameters.
    non_embedding = non_embedding_params(params)
    check_same_steps(runners, args.precision)
    times = interleaved(runners, rounds, steps)

    tokens = batch_size * size.seq_len
    per_token = palm_flops_per_token(non_embedding, size.num_layers, size.model_dim, size.seq_len)
    peak = peak_flops(dtype=args.precision, override_tflops=args.peak_tflops)
    rows = []
    for name, seconds in times.items():
        mfu = "n/a" if peak is None else f"{tokens / seconds * per_token / peak:.1%}"
        rows.append(
            f"| {name} | {seconds * 1e3:.1f} | {tokens / seconds:,.0f} | {mfu} | "
            f"{times['raw JAX'] / seconds:.3f} |"
        )
    peak_text = "unknown" if peak is None else f"{peak / 1e12:g} TFLOP/s"
    lines = [
        f"{size.num_layers} layers, {size.num_heads} heads, d_model {size.model_dim}, "
        f"seq {size.seq_len}, vocab {size.vocab_size}; batch {batch_size} ({tokens} tokens), "
        f"{args.precision}, adamw. {per_token / 1e6:,.1f} MFLOP/token (6N + 12LHQT, "
        f"N = {non_embedding / 1e6:.2f}M non-embedding parameters); peak {peak_text}.",
        "",
        "| implementation | ms/step | tokens/s | MFU | throughput vs raw JAX |",
        "|---|---|---|---|---|",
        *rows,
    ]
    table = "\n".join(lines + (["", warning] if warning else []))
    print(table)
    scan_flag = (" --scan-layers" if args.scan_layers else "") + f" --attention {args.attention}"
    if not args.quick:
        body = (
            f"Command: `python benchmarks/transformer_mfu.py --batch {batch_size} "
            f"--precision {args.precision}{scan_flag}` ({rounds} interleaved rounds of {steps} steps; "
            f"medians).\n\nMachine: {machine_line()}\n\n{table}"
        )
        title = f"Transformer LM MFU, {args.precision}, batch {batch_size}{scan_flag}"
        write_section(section_title(title), body)


if __name__ == "__main__":
    sys.exit(main())
