"""`trainer.profile`: a jax.profiler trace of chosen steps in RUN_DIR/profile/."""

import re

import optax
import pytest
from conftest import Regression, RegressionData

import paxtrain as pax
from paxtrain.train import Trainer, default_hooks
from paxtrain.train.profile import Profile


def test_profile_traces_the_chosen_train_steps(tmp_path):
    pax.seed_rng_key(0)
    profile = Profile(start_step=2, num_steps=2)
    steps_seen = []
    trainer = Trainer(
        max_steps=6, run_dir=tmp_path, loggers=["jsonl"],
        hooks=default_hooks(log_every=2, progress="off", plot=False, hooks=[profile]),
    )
    trainer.add_hook(lambda tr, m: steps_seen.append((tr.step, profile.tracing)), every=1)
    trainer.fit(Regression(), RegressionData(), optax.sgd(0.1))
    # Tracing from after step 2 up to the end of step 4: the calls of steps 2 and 3 (0-based).
    assert [tracing for _, tracing in steps_seen] == [False, True, True, False, False, False]
    (trace,) = (tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb")
    data = trace.read_bytes()
    assert b"train" in data and b"step_num" in data  # the StepTraceAnnotation of each step
    assert re.search(rb"jit_\w*step", data)  # the compiled train step's work
    assert trainer.trace_step().__class__.__name__ == "nullcontext"  # off after the trace


def test_profile_rejects_bad_steps():
    with pytest.raises(ValueError, match="num_steps >= 1"):
        Profile(start_step=0, num_steps=0)
