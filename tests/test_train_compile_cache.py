"""`trainer.compile_cache`: JAX's persistent compilation cache, on by default."""

import subprocess
import sys

import pytest
from cli_support import ROOT

from paxtrain.config.composition import compose
from paxtrain.train.compile_cache import default_cache_dir

# In a fresh process: the cache directory is process-wide JAX state.
SCRIPT = """
import sys, jax, jax.numpy as jnp
from paxtrain.train.compile_cache import enable_compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
print(enable_compile_cache(sys.argv[1]))
print(jax.config.jax_persistent_cache_min_compile_time_secs)  # 0: small programs cached too
print(jax.jit(lambda x: jnp.tanh(x @ x).sum())(jnp.ones((32, 32))))
print(sorted({e.rpartition("/")[2] for e in events if e.startswith("/jax/compilation_cache/cache_")}))
"""


def run(arg, env=None):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, arg], capture_output=True, text=True, timeout=120,
        cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def test_compiled_programs_are_written_to_and_read_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = run(str(cache))
    entries = sorted(p.name for p in cache.iterdir())
    assert first[0] == str(cache) and entries  # the compiled program was written
    assert first[1] == "0.0" and first[3] == "['cache_misses']"
    second = run(str(cache))
    assert second[:3] == first[:3] and second[3] == "['cache_hits']"  # read back, same result


def test_auto_is_a_user_cache_directory_unless_jax_has_one(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "paxtrain" / "jax"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
    assert run("auto", env)[0] == str(tmp_path / "mine")


def test_config_default_is_auto_and_null_turns_it_off():
    assert compose(ROOT / "configs/char_rnn.yaml", []).trainer.compile_cache == "auto"
    cfg = compose(ROOT / "configs/char_rnn.yaml", ["trainer.compile_cache=null"])
    assert cfg.trainer.compile_cache is None


def test_the_cache_stays_off_on_several_cpu_devices(tmp_path):
    import os

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    lines = run(str(tmp_path / "cache"), env)
    assert lines[0] == "None" and not (tmp_path / "cache").exists()


# A config's start-up in a fresh process (data, model, state, compiled steps): the persistent
# cache's misses and hits, and the compilations that did not go through the cache at all.
BUILD_SCRIPT = """
import collections, pathlib, sys, jax
from paxtrain.config.composition import compose
from paxtrain.cli.build import build_trainer
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name.rpartition("/")[2]]))
small = ["model.hidden_dim=16", "data.seq_len=16", "data.batch_size=4", "data.max_chars=20000"]
cfg = compose(sys.argv[1], [f"trainer.compile_cache={sys.argv[2]}", *small])
trainer, model, data, optimizer = build_trainer(cfg, pathlib.Path(sys.argv[3]))
data.train_batch(0)  # as the loop will; the data's own eager ops
trainer.prepare(model, data, optimizer)
print(events["cache_misses"], events["cache_hits"])
"""


@pytest.mark.slow  # a fresh process per config; the cache itself is checked above
def test_a_configs_start_up_compiles_through_the_cache(tmp_path):
    def misses_and_hits():
        result = subprocess.run(
            [sys.executable, "-c", BUILD_SCRIPT, str(ROOT / "configs/char_rnn.yaml"),
             str(tmp_path / "cache"), str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return tuple(map(int, result.stdout.split()[-2:]))

    misses, _ = misses_and_hits()
    assert misses >= 1  # the sharded build of the state, compiled through the cache
    assert misses_and_hits() == (0, misses)  # the next run reads every one of them back
