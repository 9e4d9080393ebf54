"""One of two processes training together over localhost; prints one JSON line for the test.

Started by test_parallel.py with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID and
2 virtual CPU devices each, so `initialize_distributed()` finds its settings in the environment.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import toy

from paxtrain import parallel


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
