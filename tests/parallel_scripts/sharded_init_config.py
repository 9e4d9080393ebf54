"""Sharded initialization through the config, as `paxtrain fit` builds (`build_trainer`), on 8
virtual CPU devices with `mesh.fsdp=8`; prints one JSON line.

    python sharded_init_config.py WORK_DIR

Two start-ups of the transformer_lm recipe: a fresh one, and a fine-tuning one (`init_from` a
checkpoint written here first, `init_from_include` the blocks, `freeze` the token embedding). For
each: the most bytes any one device holds at start-up (the arrays made since it began, after
`build_trainer` and after `Trainer.prepare`, and what each sharded build needs,
`sharded_init.build_peak`) against each device's final share, and whether the parameters equal
the eager build's bitwise (fresh) or the checkpoint's (loaded).
"""

from __future__ import annotations

import gc
import json
import pathlib
import sys

import jax
import numpy as np
import optax
from sharded_init import build_peak, per_device_share

import paxtrain as pax
from paxtrain import parallel
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.cli.build import build_trainer, instantiate
from paxtrain.config.composition import compose
from paxtrain.train import TrainState

ROOT = pathlib.Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "transformer_lm.yaml"
# Its default model (~0.43M parameters, 5 MB of state with Adam's moments), none of whose
# parameters is more than a sixth of it, on a small batch.
SMALL = [
    "trainer.progress=off",
    "trainer.plot=false",
    "data.seq_len=16",
    "data.batch_size=8",
    "data.eval_batches=1",
    "data.max_chars=20000",
    "callbacks=[]",
    "mesh.data=1",
    "mesh.fsdp=8",
]
FINE_TUNE = ["init_from_include=['^blocks\\.']", "freeze=['^token_embed$']"]


def new_live_arrays(before: list[jax.Array]) -> list[jax.Array]:
    """The live arrays that are not in `before` (which keeps them alive: their ids stay theirs)."""
    old = {id(x) for x in before}
    return [x for x in jax.live_arrays() if id(x) not in old]


def _struct(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def record_builds(peaks: list[int]) -> None:
    """Appends what each sharded build of the trainer needs per device to `peaks`."""
    original = parallel.build_sharded

    def recorded(build, seed, plan_for, load=None):
        inputs = []

        def load_recorded(plan):
            loaded = load(plan)
            inputs.extend(jax.tree_util.tree_map(_struct, loaded))  # the build donates them
            return loaded

        state, plan = original(build, seed, plan_for, load and load_recorded)
        if plan.state_shardings is not None:
            run = parallel.jit_build(build, seed, plan, len(inputs))
            peaks.append(build_peak(run.lower(*inputs).compile()))
        return state, plan

    parallel.build_sharded = recorded


def start(work: pathlib.Path, name: str, overrides: list[str]) -> dict:
    cfg = compose(CONFIG, [*SMALL, *overrides])
    before = jax.live_arrays()
    peaks = []
    trainer, model, data, optimizer = build_trainer(cfg, work / name)
    peaks.append(per_device_share(new_live_arrays(before)))
    trainer.prepare(model, data, optimizer)
    peaks.append(per_device_share(new_live_arrays(before)))
    state = trainer.state
    pax.seed_rng_key(cfg.seed)  # the eager build, as `build_trainer` did before
    eager = instantiate(cfg.model, "model", **data.info)
    return {
        "share": per_device_share(state),
        "peak": max(peaks + BUILD_PEAKS),
        "sharded_builds": len(BUILD_PEAKS),
        "model": {k: np.asarray(x) for k, x in flatten_state(state.model).items()},
        "eager": {k: np.asarray(x) for k, x in flatten_state(eager).items()},
        "spec": str(state.model.blocks[0].mlp[0].weight.sharding.spec),
        "parameters": list(
            flatten_state(pax.select_parameters(pax.unfreeze_parameters(state.model)))
        ),
        "frozen": state.model.token_embed.__dict__["_pax_info"].frozen,
    }


def equal(a: dict, b: dict, keys) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in keys)


BUILD_PEAKS: list[int] = []


def main(work: pathlib.Path) -> None:
    # The checkpoint to fine-tune from: the eager model shifted, saved, then gone from memory.
    cfg = compose(CONFIG, SMALL)
    pax.seed_rng_key(1)
    data = instantiate(cfg.data, "data")
    source = jax.tree_util.tree_map(
        lambda x: x + 10.0, instantiate(cfg.model, "model", **data.info)
    )
    saved = {k: np.asarray(x) for k, x in flatten_state(source).items()}
    manager = CheckpointManager(work / "source" / "checkpoints", async_save=False)
    manager.save(TrainState.create(source, optax.adam(1e-3)))
    manager.close()
    del source, manager
    gc.collect()

    record_builds(BUILD_PEAKS)
    fresh = start(work, "fresh", [])
    BUILD_PEAKS.clear()
    gc.collect()
    tuned = start(work, "tuned", [f"init_from={work / 'source'}", *FINE_TUNE])
    loaded = [k for k in tuned["parameters"] if k.startswith("blocks.")]
    kept = [k for k in tuned["model"] if k not in loaded]
    print(
        json.dumps(
            {
                "fresh": {
                    "share": fresh["share"],
                    "peak": fresh["peak"],
                    "sharded_builds": fresh["sharded_builds"],
                    "equal_eager": equal(fresh["model"], fresh["eager"], fresh["eager"]),
                    "spec": fresh["spec"],
                },
                "tuned": {
                    "share": tuned["share"],
                    "peak": tuned["peak"],
                    "sharded_builds": tuned["sharded_builds"],
                    "loaded_equal_saved": equal(tuned["model"], saved, loaded),
                    "others_equal_eager": equal(tuned["model"], tuned["eager"], kept),
                    "spec": tuned["spec"],
                    "frozen": tuned["frozen"],
                    "loaded": len(loaded),
                },
            }
        )
    )


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
