"""The ids a run on several processes gives JAX's preemption service.

The service keeps the last id each process passed to `reached_preemption_sync_point` and, when
a notice comes, picks the largest plus one as the step every process stops after. Orbax's
`CheckpointManager.save` passes the step it saves to the same service, so the loop's ids must
be those steps: with any other count (before: calls since start-up, 0 again after a resume) a
notice arriving just after a save picked a step the loop would not reach, and the run went on
training. In this one process, the service is stood in for by a recorder.
"""

import optax
import pytest
from conftest import Regression, RegressionData
from jax.experimental import multihost_utils

import paxtrain as pax
from paxtrain.train import StepSettings, Trainer, default_hooks, preemption
from paxtrain.train.checkpointing import Checkpointing


class Service:
    """Records every id passed to `reached_preemption_sync_point`, by the loop or by Orbax;
    says the sync point is reached at `stop_at`."""

    def __init__(self, stop_at=None):
        self.ids, self.stop_at = [], stop_at

    def __call__(self, step_id: int) -> bool:
        self.ids.append(step_id)
        return step_id == self.stop_at


def fit(run_dir, monkeypatch, service, max_steps, steps_per_call=1):
    monkeypatch.setattr(preemption, "preemption_service_active", lambda: True)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", service)
    pax.seed_rng_key(0)
    trainer = Trainer(
        max_steps, run_dir=run_dir,
        hooks=default_hooks(progress="off", plot=False, checkpointing=Checkpointing(every_steps=2, async_save=False)),
        step=StepSettings(steps_per_call=steps_per_call),
    )
    trainer.fit(Regression(), RegressionData(), optax.sgd(0.1))
    return trainer


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_ids_are_the_saved_steps_also_after_a_resume(tmp_path, monkeypatch, steps_per_call):
    fit(tmp_path, monkeypatch, Service(), 4, steps_per_call)
    service = Service()
    fit(tmp_path, monkeypatch, service, 8, steps_per_call)  # resumed from step 4
    # One id per step from the resumed step on, each save's step again (Orbax): the id the
    # service holds never goes back, whoever passed it last.
    assert service.ids == sorted(service.ids)
    assert sorted(set(service.ids)) == [5, 6, 7, 8]


def test_every_process_stops_after_the_step_the_service_picks(tmp_path, monkeypatch):
    trainer = fit(tmp_path, monkeypatch, Service(stop_at=5), 8)
    assert trainer.step == 5
    assert trainer.preempted == preemption.OTHER_PROCESS
    assert trainer.checkpoints.steps() == [2, 4, 5]
