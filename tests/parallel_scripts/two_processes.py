"""One of two processes training together over localhost; prints one JSON line for the test.

Started by test_parallel.py with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID and
2 virtual CPU devices each, so `initialize_distributed()` finds its settings in the environment.
"""

from __future__ import annotations

import json
import tempfile

import jax
import numpy as np
import optax
import toy
from jax.sharding import AxisType, Mesh

from paxtrain import parallel
from paxtrain.parallel.distributed import main_process_decides
from paxtrain.train import Layout, Trainer, default_hooks
from paxtrain.train.hooks import Hook


class RowsAsked:
    """The toy's batches through the `rows=` contract, recording the rows each call asks for."""

    info: dict = {}

    def __init__(self):
        self.asked = []

    def train_batch(self, step, rows=None):
        self.asked.append(None if rows is None else [rows.start, rows.stop])
        batch = toy.batch_of(step)
        return batch if rows is None else parallel.take_rows(batch, rows)

    def eval_batches(self):
        return iter(())


class RecordLosses(Hook):
    def __init__(self):
        self.losses = []

    def on_step(self, trainer, metrics):
        self.losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))


def interleaved_mesh() -> Mesh:
    """Devices alternating between the processes along "data": each process holds two blocks
    of rows of the batch (0:4 and 8:12 for process 0), not one."""
    by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(2)]
    order = [d for pair in zip(*by_process) for d in pair]
    return Mesh(np.array(order).reshape(4, 1, 1), parallel.AXES, axis_types=(AxisType.Auto,) * 3)


def trainer_run(mesh) -> dict:
    """The toy through `Trainer.fit` on `mesh`: its losses and the rows this process read."""
    source, record = RowsAsked(), RecordLosses()
    trainer = Trainer(
        toy.STEPS, run_dir=tempfile.mkdtemp(), loggers=["jsonl"],
        hooks=default_hooks(progress="off", plot=False, hooks=[record]),
        layout=Layout(mesh=mesh),
    )
    trainer.fit(toy.Block(), source, optax.adam(1e-2, eps=1e-3), loss_fn=toy.loss_fn)
    return {"losses": record.losses, "asked": source.asked}


def pmap_state_read_between_steps(state, plan) -> dict:
    """The "pmap" state read 20 times between cross-process steps, without waiting for them: the
    Trainer's pattern (eval, checkpoints). Reading each leaf with `x[0]` (an all-reduce over the
    local devices) hung here every time (issue 12)."""
    step = jax.pmap(lambda x: jax.lax.psum(x, parallel.PMAP_AXIS), parallel.PMAP_AXIS)
    count = parallel.replicate(np.ones((), np.float32))
    for _ in range(20):
        count = step(count)
        copy = plan.unreplicate(state)
    jax.block_until_ready((count, copy))
    return {
        "count": float(parallel.unreplicate(count)),
        "on_first_device": all(
            x.devices() == {jax.local_devices()[0]} for x in jax.tree_util.tree_leaves(copy)
        ),
    }


def main() -> None:
    settings = parallel.initialize_distributed(timeout_s=60)
    mesh = parallel.make_mesh(data=2, fsdp=2)
    losses, state, _, plan = toy.train("jit", mesh, fsdp_min_size=64)
    weight = state.model.mlp.layers[0].weight
    pmap_losses, pmap_state, _, pmap_plan = toy.train("pmap")
    result = {
        "source": settings.source,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "is_main": parallel.is_main_process(),
        "batch_slice": str(parallel.process_batch_slice(toy.BATCH, mesh)),
        "losses": losses,
        "weight_shard_shape": list(weight.addressable_shards[0].data.shape),
        "weight_fully_addressable": weight.is_fully_addressable,
        "pmap_losses": pmap_losses,
        "pmap_reads": pmap_state_read_between_steps(pmap_state, pmap_plan),
        # Each process passes its own flag; both get process 0's.
        "decided": [main_process_decides(jax.process_index() == p) for p in (0, 1)],
        "trainer": {"default": trainer_run(None), "interleaved": trainer_run(interleaved_mesh())},
    }
    if parallel.is_main_process():
        models = {
            "jit": toy.host(state.model),
            "pmap": toy.host(pmap_plan.unreplicate(pmap_state).model),
        }
        result["models"] = {
            name: {k: np.asarray(v).tolist() for k, v in toy.leaves_by_path(m).items()}
            for name, m in models.items()
        }
    print(json.dumps(result), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
