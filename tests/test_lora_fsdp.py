"""A LoRA fine-tune laid out on 8 virtual devices (subprocesses): with FSDP the frozen base
weights are split over "fsdp" as a full fine-tune's are, and hold the base run's values; with
tensor parallelism the adapters are split with their layers and train as on one device."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from cli_support import fit_losses
from conftest import cpu_env
from jax.sharding import AbstractMesh, PartitionSpec

from paxtrain.cli.app import main
from paxtrain.parallel import sharding

ROOT = pathlib.Path(__file__).parents[1]
LLAMA = str(ROOT / "configs" / "llama_lm.yaml")
TINY = [
    "trainer.max_steps=2",
    "trainer.eval_every=null",
    "trainer.progress=off",
    "trainer.plot=false",
    "trainer.checkpoint.async_save=false",
    "data.seq_len=16",
    "data.batch_size=8",
    "data.eval_batches=1",
    "data.max_chars=20000",
    "optimizer.learning_rate.warmup_steps=1",
    "callbacks=[]",
]

# Builds the LoRA run's state sharded (what `paxtrain fit` does before its first step) and
# prints each leaf's PartitionSpec and whether the base's values are the checkpoint's.
LAYOUT = """
import json, pathlib, sys
import jax, numpy as np
from paxtrain.checkpoint.store import CheckpointManager, flatten_state
from paxtrain.cli.build import build_trainer
from paxtrain.config.composition import compose

config, base, run_dir, *overrides = sys.argv[1:]
trainer, model, data, optimizer = build_trainer(compose(config, overrides), pathlib.Path(run_dir))
trainer.prepare(model, data, optimizer)
flat = flatten_state(trainer.state.model)
manager = CheckpointManager(base + "/checkpoints", read_only=True)
saved = manager.read_arrays({f"model.{p}": np.zeros(x.shape, x.dtype) for p, x in flat.items()
                             if "adapter" not in p})
print(json.dumps({
    "devices": jax.device_count(),
    "specs": {p: [None if e is None else str(e) for e in x.sharding.spec] for p, x in flat.items()},
    "equal": all(np.array_equal(saved["model." + p], x) for p, x in flat.items() if "adapter" not in p),
}))
"""


def test_fsdp_splits_the_frozen_base_like_a_full_fine_tunes(tmp_path):
    base = tmp_path / "base"
    assert main(["fit", LLAMA, *TINY, f"run_dir={base}"]) == 0
    env = cpu_env(8, PYTHONPATH=str(ROOT))
    overrides = [*TINY, "mesh.fsdp=8", f"init_from={base}", "finetune.lora.rank=8",
                 "finetune.lora.paths=[query_proj$,value_proj$]"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", LAYOUT, LLAMA, str(base), str(tmp_path / "lora"), *overrides],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["devices"] == 8 and result["equal"]
    mesh = AbstractMesh((1, 8, 1), ("data", "fsdp", "tensor"))
    query = "blocks.layers.0.attention.query_proj.weight"  # frozen, 128 x 128: split
    expected = sharding.partition_spec(f"model.{query}", (128, 128), mesh)
    assert "fsdp" in expected
    assert result["specs"][query] == [None if e is None else str(e) for e in expected]
    assert result["specs"]["blocks.layers.0.mlp.up_proj.weight"].count("fsdp") == 1
    # The adapters (8 x 128) are under FSDP's minimum size: replicated.
    assert set(result["specs"]["blocks.layers.0.attention.query_proj.adapter.lora_a"]) <= {None}


@pytest.mark.parametrize(
    "path, shape, spec",
    [
        ("attention.query_proj.adapter.lora_a", (8, 128), PartitionSpec(None, None)),
        ("attention.query_proj.adapter.lora_b", (128, 8), PartitionSpec("tensor", None)),
        ("attention.output_proj.adapter.lora_a", (8, 128), PartitionSpec(None, "tensor")),
        ("attention.output_proj.adapter.lora_b", (128, 8), PartitionSpec(None, None)),
        ("mlp.up_proj.adapter.lora_b", (352, 8), PartitionSpec("tensor", None)),
        ("mlp.down_proj.adapter.lora_a", (8, 352), PartitionSpec(None, "tensor")),
        ("mlp.layers.0.adapter.lora_b", (128, 8), PartitionSpec("tensor", None)),
        ("mlp.layers.0.adapter.lora_a", (8, 128), PartitionSpec(None, None)),
        ("mlp.layers.2.adapter.lora_a", (8, 128), PartitionSpec(None, "tensor")),
    ],
)
def test_adapters_are_split_with_their_layers_tensor_parallel_split(path, shape, spec):
    mesh = AbstractMesh((1, 1, 2), ("data", "fsdp", "tensor"))
    assert sharding.partition_spec(f"model.blocks.layers.0.{path}", shape, mesh) == spec


@pytest.mark.slow
def test_a_lora_run_trains_tensor_parallel_and_fsdp_as_on_one_device(tmp_path):
    base = tmp_path / "base"
    assert main(["fit", LLAMA, *TINY, f"run_dir={base}"]) == 0
    lora = [f"init_from={base}", "finetune.lora.rank=8", "finetune.lora.paths=[proj$]"]
    fit = [LLAMA, *TINY, "trainer.max_steps=4", "trainer.log_every=1", *lora]
    one = fit_losses(tmp_path / "one", 1, *fit)
    eight = fit_losses(tmp_path / "eight", 8, *fit, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    assert len(one) == 4
    np.testing.assert_allclose(eight, one, rtol=2e-5)
