"""Trains the char_rnn recipe through its config on this process's devices, for the tests of
checkpoints moved between device layouts.

    python topology.py save RUN_DIR STEPS [OVERRIDE ...]     trains, writes RUN_DIR/saved.npz
    python topology.py restore RUN_DIR STEPS [OVERRIDE ...]  resumes, compares with saved.npz

`restore` records the parameters right after the resume (before any step) and compares them with
what `save` wrote. Both print one JSON line: device count, how the largest parameter is laid
out, the losses logged and (for `restore`) whether the restored state equals the saved one.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np

from paxtrain.checkpoint.store import flatten_state
from paxtrain.cli.build import build_trainer
from paxtrain.config.composition import compose
from paxtrain.train.hooks import Hook
from paxtrain.train.logger import read_metrics

ROOT = pathlib.Path(__file__).parents[2]
TINY = [
    "trainer.progress=off",
    "trainer.plot=false",
    "trainer.log_every=1",
    "trainer.eval_every=null",
    "trainer.checkpoint.async_save=false",
    "data.seq_len=16",
    "data.batch_size=8",
    "data.eval_batches=1",
    "data.max_chars=20000",
    "model.embed_dim=8",
    "model.hidden_dim=64",  # an LSTM weight of 18432 elements: above FSDP's threshold
    "optimizer.learning_rate.warmup_steps=1",
    "callbacks=[]",
]


class RecordState(Hook):
    """Keeps the state as training starts, i.e. as restored from the checkpoint."""

    def on_train_start(self, trainer):
        state = trainer.state
        self.arrays = {path: np.asarray(x) for path, x in flatten_state(state).items()}
        largest = max(jax.tree_util.tree_leaves(state.model), key=lambda x: x.size)
        self.layout = {
            "devices": len(largest.sharding.device_set),
            "shard_shape": list(largest.sharding.shard_shape(largest.shape)),
            "shape": list(largest.shape),
        }


def main(mode: str, run_dir: str, steps: str, *overrides: str) -> None:
    cfg = compose(
        ROOT / "configs" / "char_rnn.yaml",
        [*TINY, f"run_dir={run_dir}", f"trainer.max_steps={steps}", *overrides],
    )
    trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path(run_dir))
    record = RecordState()
    trainer.add_hook(record)
    trainer.fit(model, data, optimizer)
    result = {
        "devices": jax.device_count(),
        "layout": record.layout,
        "step": trainer.step,
        "losses": {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r},
    }
    saved = pathlib.Path(run_dir) / "saved.npz"
    if mode == "save":
        final = {path: np.asarray(x) for path, x in flatten_state(trainer.state).items()}
        np.savez(saved, **final)
    else:
        with np.load(saved) as arrays:
            result["restored_equal"] = sorted(arrays.files) == sorted(record.arrays) and all(
                np.array_equal(arrays[path], record.arrays[path]) for path in arrays.files
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
