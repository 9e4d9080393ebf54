"""`Trainer.summary` of every packaged recipe in every layout on 8 virtual CPU devices; prints one
JSON object for test_telemetry_layouts.py: per recipe and layout, the summary's numbers and the
bytes that device 0 really holds of the state once `prepare` built it (or the layout's error).

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu (the test does).
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax

from paxtrain.cli.build import build_trainer
from paxtrain.config.composition import compose
from paxtrain.config.packaged import find_config
from paxtrain.errors import PaxtrainError

# Each with a leaf of at least `parallel.DEFAULT_FSDP_MIN_SIZE` elements, which FSDP splits.
RECIPES = {
    "char_rnn": ["data.seq_len=16", "data.batch_size=8", "data.max_chars=20000",
                 "model.embed_dim=8", "model.hidden_dim=64"],
    "image_classifier": ["data.batch_size=8", "model.channels=[32,64]"],
    "llama_lm": ["data.max_chars=20000", "data.seq_len=16", "data.batch_size=8",
                 "model.model_dim=128", "model.num_heads=4", "model.num_kv_heads=4"],
    "transformer_lm": ["data.max_chars=20000", "data.seq_len=16", "data.batch_size=8",
                       "model.model_dim=64", "model.num_heads=4"],
}  # fmt: skip
LAYOUTS = {
    "data": ["mesh.data=8"],
    "fsdp": ["mesh.data=2", "mesh.fsdp=4"],
    "tensor": ["mesh.data=2", "mesh.tensor=4"],
    "data_fsdp_tensor": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
    "pmap": ["parallel.strategy=pmap"],
}


def device0_bytes(tree) -> int:
    """Bytes of the shards of `tree`'s arrays on the first device, as allocated."""
    device = jax.devices()[0]
    return sum(
        shard.data.nbytes
        for x in jax.tree_util.tree_leaves(tree)
        for shard in x.addressable_shards
        if shard.device == device
    )


def run(recipe: str, layout: list[str]) -> dict:
    overrides = [*RECIPES[recipe], *layout, "callbacks=[]", "trainer.progress=off"]
    cfg = compose(find_config(recipe), overrides)
    try:
        trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path("runs/none"))
        summary = trainer.summary(model, data, optimizer)
    except PaxtrainError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    result = {
        "parameters": summary.parameters,
        "state_bytes": summary.state_bytes,
        "step_bytes": summary.step_bytes,
        "fits": summary.fits,
        "flops_per_example": summary.flops_per_example,
        "text": str(summary),
    }
    if "pmap" not in layout[0]:  # pmap's state: one whole copy per device
        trainer.prepare(model, data, optimizer)
        state = trainer.state
        result["allocated"] = {
            "parameters": device0_bytes(state.model.parameters()),
            "optimizer state": device0_bytes(state.optimizer),
        }
    return result


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    names = sys.argv[1:] or sorted(RECIPES)
    results = {r: {name: run(r, layout) for name, layout in LAYOUTS.items()} for r in names}
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
