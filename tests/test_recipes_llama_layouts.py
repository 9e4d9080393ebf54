"""`paxtrain fit llama_lm` on 8 virtual devices, FSDP and tensor parallel together, logs the
losses of one device, and the tensor rules split its attention and SwiGLU projections."""

import pathlib

import numpy as np
import pytest
from cli_support import fit_losses
from jax.sharding import AbstractMesh, PartitionSpec

from paxtrain.parallel import sharding

ROOT = pathlib.Path(__file__).parents[1]
TINY = [
    "trainer.max_steps=6",
    "trainer.log_every=1",
    "trainer.eval_every=null",
    "trainer.progress=off",
    "trainer.plot=false",
    "trainer.checkpoint.enabled=false",
    "data.seq_len=16",
    "data.batch_size=8",
    "data.eval_batches=1",
    "data.max_chars=20000",
    "model.model_dim=32",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "optimizer.learning_rate.warmup_steps=1",
    "callbacks=[]",
]


@pytest.mark.slow
def test_fsdp_and_tensor_parallel_train_like_one_device(tmp_path):
    one = fit_losses(tmp_path / "one", 1, "llama_lm", *TINY)
    eight = fit_losses(
        tmp_path / "eight", 8, "llama_lm", *TINY, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"
    )
    assert len(one) == 6
    np.testing.assert_allclose(eight, one, rtol=2e-5)


@pytest.mark.parametrize(
    "path, spec",
    [
        (".model.blocks.layers[0].attention.key_proj.weight", PartitionSpec(None, "tensor")),
        (".model.blocks.layers[0].attention.output_proj.weight", PartitionSpec("tensor", None)),
        (".model.blocks.layers[0].mlp.gate_proj.weight", PartitionSpec(None, "tensor")),
        (".model.blocks.layers[0].mlp.up_proj.weight", PartitionSpec(None, "tensor")),
        (".model.blocks.layers[0].mlp.down_proj.weight", PartitionSpec("tensor", None)),
    ],
)
def test_tensor_rules_split_the_llama_projections(path, spec):
    mesh = AbstractMesh((1, 1, 2), ("data", "fsdp", "tensor"))
    assert sharding.partition_spec(path, (64, 128), mesh) == spec
