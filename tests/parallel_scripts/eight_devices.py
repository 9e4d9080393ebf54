"""Every parallel strategy on 8 virtual CPU devices; prints one JSON object for test_parallel.py.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu (the test does).
"""

from __future__ import annotations

import json
import tempfile

import jax
import numpy as np
import toy
from jax.sharding import PartitionSpec

from paxtrain import parallel
from paxtrain.checkpoint.store import CheckpointManager
from paxtrain.train import Layout, Trainer, make_eval_step
from paxtrain.train.compile_cache import enable_compile_cache

SMALL = {"fsdp_min_size": 64}  # the toy's leaves are small; shard them anyway
CASES = {
    # name: (strategy, mesh sizes, setup kwargs, step options)
    "data_parallel": ("jit", {"data": -1}, {}, {}),
    "fsdp": ("jit", {"data": 2, "fsdp": 4}, SMALL, {}),
    "tensor": ("jit", {"data": 2, "tensor": 4}, {}, {}),
    "data_fsdp_tensor": ("jit", {"data": 2, "fsdp": 2, "tensor": 2}, SMALL, {}),
    "fsdp_scan_accum": (
        "jit",
        {"data": 4, "fsdp": 2},
        SMALL,
        {"steps_per_call": 2, "grad_accum_steps": 2},
    ),  # fmt: skip
    "pmap": ("pmap", None, {}, {}),
}


def spec_json(spec: PartitionSpec) -> list:
    return [list(e) if isinstance(e, tuple) else e for e in spec]


def run_case(strategy, mesh_sizes, setup_kwargs, step_options) -> tuple[dict, tuple]:
    """The case's results, and its trained (state, train_step, plan)."""
    mesh = parallel.make_mesh(**mesh_sizes) if mesh_sizes else None
    losses, state, train_step, plan = toy.train(
        strategy, mesh, step_options=step_options, **setup_kwargs
    )
    model = plan.unreplicate(state).model
    case = {
        "losses": losses,
        "model": {k: v.tolist() for k, v in toy.leaves_by_path(toy.host(model)).items()},
    }
    if strategy == "pmap":
        case["step_shape"] = list(state.step.shape)
        return case, (state, train_step, plan)
    leaves = toy.leaves_by_path(state)
    shardings = toy.leaves_by_path(plan.state_shardings)
    case["cache_size"] = train_step._jitted._cache_size()
    case["shardings_kept"] = all(leaves[k].sharding == shardings[k] for k in leaves)
    case["specs"] = {k: spec_json(s.spec) for k, s in shardings.items()}
    case["shard_shapes"] = {k: list(x.addressable_shards[0].data.shape) for k, x in leaves.items()}
    spc = step_options.get("steps_per_call", 1)
    batch = plan.put_batch(toy.stacked_batches(0, spc) if spc > 1 else toy.batch_of(0))
    case["batch_shard_shape"] = list(batch["x"].addressable_shards[0].data.shape)
    return case, (state, train_step, plan)


def checkpoint_round_trip(state, train_step, plan) -> dict:
    """A trained FSDP state saved and restored by `CheckpointManager`: the same values and
    layout, and the step goes on from it without compiling again."""
    with tempfile.TemporaryDirectory() as directory:
        manager = CheckpointManager(directory, async_save=False)
        manager.save(state, wait=True)
        restored, _ = manager.restore(state)
        manager.close()
    saved, loaded = toy.leaves_by_path(state), toy.leaves_by_path(restored)
    shardings = toy.leaves_by_path(plan.state_shardings)
    result = {
        "values_equal": all(np.array_equal(saved[k], loaded[k]) for k in saved),
        "shardings_kept": all(loaded[k].sharding == shardings[k] for k in loaded),
    }
    train_step(restored, plan.put_batch(toy.batch_of(toy.STEPS)))
    result["cache_size"] = train_step._jitted._cache_size()
    return result


def ragged_eval(state, plan) -> dict:
    """An eval batch of 13 rows, which 8 devices cannot split: placed by `put_eval_batch`, its
    metrics equal those of the same state and batch on one device."""
    eval_step = make_eval_step(lambda model, batch: toy.loss_fn(model, batch)[1][1])
    batch = toy.batch_of(0, size=13)
    on_mesh = eval_step(state, plan.put_eval_batch(batch))["mean_prediction"]
    on_one = eval_step(toy.host(state), batch)["mean_prediction"]
    return {"mesh": float(on_mesh), "one_device": float(on_one)}


def error_of(fn) -> str:
    try:
        fn()
    except (ValueError, RuntimeError) as error:
        return str(error)
    return "no error"


class ScalarInEvalBatches:
    """The toy's batches, with a scalar in the evaluation batches: no batch axis to split."""

    info: dict = {}

    def train_batch(self, step):
        return toy.batch_of(step)

    def eval_batches(self):
        yield {**toy.batch_of(0), "weight": np.float32(1.0)}


def eval_batch_error() -> str:
    import optax

    trainer = Trainer(
        2, run_dir=tempfile.mkdtemp(),
        layout=Layout(mesh={"data": 8}),
    )
    return error_of(
        lambda: trainer.prepare(toy.Block(), ScalarInEvalBatches(), optax.sgd(0.1), toy.loss_fn)
    )


def errors() -> dict[str, str]:
    state = toy.fresh_state(toy.make_train_step(toy.loss_fn))
    jit_plan = parallel.setup(state, "jit", parallel.make_mesh(data=-1))
    pmap_plan = parallel.setup(state, "pmap")
    head_rule = [(r"head\.weight$", PartitionSpec(None, parallel.TENSOR))]
    return {
        "batch_not_divisible": error_of(lambda: jit_plan.put_batch(toy.batch_of(0, size=12))),
        "pmap_batch_not_divisible": error_of(lambda: pmap_plan.put_batch(toy.batch_of(0, size=12))),
        "rule_not_divisible": error_of(
            lambda: parallel.setup(
                state, "jit", parallel.make_mesh(data=1, tensor=8), tensor_rules=head_rule
            )
        ),
        "pmap_with_fsdp": error_of(
            lambda: parallel.setup(state, "pmap", parallel.make_mesh(data=4, fsdp=2))
        ),
        "tensor_axis_unused": error_of(
            lambda: parallel.setup(
                state, "jit", parallel.make_mesh(data=4, tensor=2), tensor_rules=()
            )
        ),
        "eval_batch_without_batch_axis": eval_batch_error(),
        "mesh_size": error_of(lambda: parallel.make_mesh(data=3)),
        "mesh_remaining": error_of(lambda: parallel.make_mesh(data=-1, tensor=3)),
    }


def main() -> None:
    cases, trained = {}, {}
    for name, args in CASES.items():
        cases[name], trained[name] = run_case(*args)
    results = {
        "device_count": jax.device_count(),
        "cases": cases,
        "errors": errors(),
        "checkpoint": checkpoint_round_trip(*trained["fsdp"]),
        "ragged_eval": ragged_eval(trained["fsdp"][0], trained["fsdp"][2]),
        "process_batch_slice": str(parallel.process_batch_slice(16, parallel.make_mesh())),
        "compile_cache": str(enable_compile_cache()),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
