"""MFU, tokens/s per device and memory in the logs of every recipe (metrics.jsonl and
TensorBoard), the peak FLOP/s table, and the memory profile of `trainer.profile.memory`."""

from __future__ import annotations

import json
import types

import pytest

from paxtrain.cli.fit import fit_from_config
from paxtrain.config.composition import compose
from paxtrain.config.packaged import find_config
from paxtrain.telemetry.peak_flops import peak_flops
from tests.test_recipes_models import SMALL_OVERRIDES

RECIPES = {
    "char_rnn": ["data.seq_len=16", "data.batch_size=4", "data.max_chars=20000",
                 "model.embed_dim=8", "model.hidden_dim=16"],
    **SMALL_OVERRIDES,
}  # fmt: skip
PEAK_TFLOPS = 0.05
PERF = ("perf/mfu", "perf/memory_in_use_gib", "perf/memory_peak_gib")


def fit(recipe, run_dir, *extra):
    cfg = compose(find_config(recipe), [
        *RECIPES[recipe], "trainer.max_steps=6", "trainer.log_every=3", "trainer.eval_every=null",
        "trainer.progress=off", "trainer.plot=false", "trainer.checkpoint.enabled=false",
        "optimizer.learning_rate.warmup_steps=1", "callbacks=[]", f"run_dir={run_dir}",
        f"trainer.peak_tflops={PEAK_TFLOPS}", *extra,
    ])  # fmt: skip
    return fit_from_config(cfg)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_logs_mfu_and_memory(recipe, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = fit(recipe, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    logged = {r["step"]: r for r in records if "perf/mfu" in r}
    assert sorted(logged) == [3, 6]
    last = logged[6]
    assert 0 < last["perf/memory_in_use_gib"] <= last["perf/memory_peak_gib"] < 64
    # MFU from the model FLOPs and the step rate, the rate timed as Throughput times it.
    info = trainer.model_info
    steps_per_s = last["perf/mfu"] * PEAK_TFLOPS * 1e12 / info.flops_per_step
    assert steps_per_s == pytest.approx(last["perf/steps_per_s"], rel=0.5)
    if recipe != "image_classifier":  # the language models count tokens
        tokens = last["perf/tokens_per_s_per_device"]
        assert tokens == pytest.approx(last["perf/tokens_per_s"], rel=0.5)
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    for key in PERF:
        assert {e.step for e in events.Scalars(key)} == {3, 6}
        assert events.Scalars(key)[-1].value == pytest.approx(last[key], rel=1e-6)
    out = capsys.readouterr().out
    assert f"paxtrain: {info.parameters:,} parameters;" in out
    assert out.count(": MFU ") == 1  # the first one only


def test_a_device_without_a_peak_logs_no_mfu(tmp_path, capsys):
    fit("char_rnn", tmp_path / "run", "trainer.peak_tflops=null")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("perf/memory_peak_gib" in r for r in records)
    assert not any("perf/mfu" in r for r in records)
    assert "no peak FLOP/s" not in capsys.readouterr().out  # said on accelerators only


def test_memory_profile_at_the_chosen_step(tmp_path):
    fit("char_rnn", tmp_path / "run", "trainer.profile.start_step=2", "trainer.profile.memory=true")
    profile = tmp_path / "run" / "profile" / "memory-step3.prof"
    assert profile.stat().st_size > 0


@pytest.mark.parametrize(
    "kind, dtype, tflops",
    [("NVIDIA H100 80GB HBM3", "bfloat16", 989.0), ("NVIDIA H100 PCIe", "bfloat16", 756.0),
     ("NVIDIA H100 80GB HBM3", "float32", 494.5), ("NVIDIA A100-SXM4-40GB", "bfloat16", 312.0),
     ("TPU v5 lite", "bfloat16", 197.0), ("NVIDIA H200", "bfloat16", 989.0)],
)  # fmt: skip
def test_peak_flops_by_device_kind_and_dtype(kind, dtype, tflops):
    assert peak_flops(types.SimpleNamespace(device_kind=kind), dtype) == tflops * 1e12


def test_an_unknown_kind_or_dtype_has_no_peak_unless_given():
    device = types.SimpleNamespace(device_kind="cpu")
    assert peak_flops(device, "float32") is None
    assert peak_flops(types.SimpleNamespace(device_kind="TPU v4"), "float16") is None
    assert peak_flops(device, "float32", override_tflops=2.0) == 2e12
