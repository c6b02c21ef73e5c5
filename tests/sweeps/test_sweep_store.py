"""The sweep controller on a real database: trial numbers stay unique when many
controllers advance one sweep at once, the sweep ends with exactly max_trials trials,
records the best, and a trial's peers are read from records only."""

from __future__ import annotations

import threading
import uuid

import pytest

from mlp_engine.data import builtin_info
from mlp_engine.spec import Limits
from mlp_engine.sweep_spec import SweepSpec
from store import sweeps as store_sweeps
from store.jobs import claim_job, finish_job, record_epochs
from store.models import JobStatus

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

SPEC = {"name": "s", "base": {"dataset": {"builtin": "iris"}, "training": {"epochs": 3}},
        "space": {"optimizer.lr": {"log_uniform": [1e-3, 0.1]}},
        "strategy": "tpe", "max_trials": 7, "max_concurrent": 3, "seed": 1,
        "objective": {"metric": "val_accuracy"}}


def _sweep(session_factory, tenant_id: str, **overrides):  # type: ignore[no-untyped-def]
    spec = SweepSpec.model_validate({**SPEC, **overrides})
    with session_factory() as s:
        sweep, created = store_sweeps.create_sweep(
            s, tenant_id=tenant_id, spec=spec, dataset_info=builtin_info("iris", None),
            dataset_id=None, limits=Limits())
        assert created
        return sweep.id


def _tenant(session_factory) -> str:  # type: ignore[no-untyped-def]
    from store.keys import get_or_create_tenant

    with session_factory() as s:
        return get_or_create_tenant(s, f"sw-{uuid.uuid4().hex[:8]}").id


def _finish_all_active(session_factory, sweep_id: str, *, accuracy) -> int:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        active = [j for j in store_sweeps.trials_of(s, sweep_id)
                  if j.status == JobStatus.QUEUED]
        for job in active:
            assert claim_job(s, job.id, worker_id="w", lease_s=30)
            record_epochs(s, job.id, [{"epoch": 1, "val_accuracy": accuracy(job.trial),
                                       "train_loss": 1.0}], worker_id="w")
            assert finish_job(s, job.id, JobStatus.SUCCEEDED, worker_id="w")
        return len(active)


def test_concurrent_controllers_make_each_trial_once(session_factory) -> None:
    sweep_id = _sweep(session_factory, _tenant(session_factory))
    sent: list[str] = []
    lock = threading.Lock()

    def enqueue(session, job):  # type: ignore[no-untyped-def]
        with lock:
            sent.append(job.id)

    def controller() -> None:
        with session_factory() as s:
            store_sweeps.advance_sweep(s, sweep_id, enqueue=enqueue)

    for _round in range(5):
        threads = [threading.Thread(target=controller) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with session_factory() as s:
            trials = store_sweeps.trials_of(s, sweep_id)
            assert sum(j.status == JobStatus.QUEUED for j in trials) <= 3
        _finish_all_active(session_factory, sweep_id, accuracy=lambda k: 0.5 + k / 100)
    controller()
    with session_factory() as s:
        trials = store_sweeps.trials_of(s, sweep_id)
        sweep = store_sweeps.get_sweep(s, sweep_id)
        assert [j.trial for j in trials] == list(range(7))
        assert len(sent) == len(set(sent)) == 7
        assert sweep.status == "succeeded" and sweep.finished_at is not None
        assert sweep.best["trial"] == 6 and sweep.best["objective"] == pytest.approx(0.56)
        assert [j.trial for j in store_sweeps.leaderboard(sweep, trials)][:2] == [6, 5]
        # extending a finished sweep runs it again, up to the new max_trials
        store_sweeps.extend_sweep(s, sweep, 9)
        assert store_sweeps.advance_sweep(s, sweep_id).status == "running"
    _finish_all_active(session_factory, sweep_id, accuracy=lambda k: 0.1)
    with session_factory() as s:
        assert store_sweeps.advance_sweep(s, sweep_id).finished
        assert len(store_sweeps.trials_of(s, sweep_id)) == 9


def test_cancel_and_delete(session_factory) -> None:
    sweep_id = _sweep(session_factory, _tenant(session_factory))
    with session_factory() as s:
        store_sweeps.advance_sweep(s, sweep_id)
        sweep = store_sweeps.get_sweep(s, sweep_id)
        with pytest.raises(store_sweeps.SweepStateError):
            store_sweeps.delete_sweep(s, sweep)
        sweep, stopped = store_sweeps.cancel_sweep(s, sweep)
        assert sweep.status == "cancelled" and len(stopped) == 3
        assert all(j.status == "cancelled" for j in store_sweeps.trials_of(s, sweep_id))
        assert not store_sweeps.advance_sweep(s, sweep_id).created  # no new trials
        ids = store_sweeps.delete_sweep(s, sweep)
        assert len(ids) == 3 and store_sweeps.get_sweep(s, sweep_id) is None


def test_peers_are_those_recorded_before_this_trials_record(session_factory) -> None:
    sweep_id = _sweep(session_factory, _tenant(session_factory))
    with session_factory() as s:
        store_sweeps.advance_sweep(s, sweep_id)
        a, b, c = store_sweeps.trials_of(s, sweep_id)
        for job, acc in ((a, 0.9), (b, 0.5)):
            claim_job(s, job.id, worker_id="w", lease_s=30)
            record_epochs(s, job.id, [{"epoch": 1, "val_accuracy": acc}], worker_id="w")
        claim_job(s, c.id, worker_id="w", lease_s=30)
        record_epochs(s, c.id, [{"epoch": 1, "val_accuracy": 0.1}], worker_id="w")
        # recorded after c: not among c's peers, whenever c asks again
        record_epochs(s, b.id, [{"epoch": 2, "val_accuracy": 0.7}], worker_id="w")
        peers = store_sweeps.peer_objectives(s, sweep_id=sweep_id, job_id=b.id, epoch=1,
                                             metric="val_accuracy")
        assert sorted(peers) == [0.1, 0.9] or sorted(peers) == [0.9]
        assert sorted(store_sweeps.peer_objectives(
            s, sweep_id=sweep_id, job_id=c.id, epoch=1, metric="val_accuracy")) == [0.5, 0.9]
        assert store_sweeps.peer_objectives(
            s, sweep_id=sweep_id, job_id=a.id, epoch=2, metric="val_accuracy") == [0.7]
