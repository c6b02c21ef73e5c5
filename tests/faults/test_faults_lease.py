"""The lease as a fence, in process (no Celery): deliveries racing for one job, and a
worker whose lease lapsed while it still runs (a stalled process, a database outage longer
than the lease) and whose job another worker took over. The late worker must write
nothing: no metrics, no checkpoint the job row names, no end state.

Run on SQLite and, when a server answers, PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from store import jobs
from store.artifacts import ArtifactStore
from store.models import Job, utcnow

BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
SPEC = {"dataset": {"builtin": "iris"}, "training": {"epochs": 5}}


@pytest.fixture
def job_id(session_factory: Any) -> str:
    from store.keys import get_or_create_tenant

    with session_factory() as s:
        tenant = get_or_create_tenant(s, f"lease-{uuid.uuid4().hex[:8]}")
        job, _ = jobs.create_job(s, tenant_id=tenant.id, spec=SPEC)
        return job.id


class _State:
    """What the checkpoint writer reads of fit's TrainState: the epoch, the history (one
    record per epoch) and the checkpoint."""

    def __init__(self, *losses: float) -> None:
        self.history = [{"epoch": n, "train_loss": loss} for n, loss in enumerate(losses, 1)]
        self.epoch = len(losses)

    def checkpoint(self) -> dict[str, Any]:
        import torch

        return {"epoch": self.epoch, "w": torch.full((3,), float(self.epoch))}


def _writer(session_factory: Any, artifacts: ArtifactStore, job_id: str, *,
            worker_id: str, attempt: int, resumed: Job | None = None) -> Any:
    """A checkpoint writer after every epoch, as worker.runner.job_callbacks makes it for
    a job (`resumed`: the row it resumes from)."""
    from worker.callbacks import CheckpointWriter, JobLedger

    ledger = JobLedger(job_id=job_id, session_factory=session_factory, worker_id=worker_id,
                       recorded_through=resumed.epoch if resumed else 0,
                       checkpoint=resumed.checkpoint_uri if resumed else None)
    return CheckpointWriter(ledger, artifacts=artifacts, attempt=attempt, every=1)


def _row(session_factory: Any, job_id: str) -> Job:
    with session_factory() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


@BOTH
def test_deliveries_racing_for_one_job_claim_it_once(session_factory: Any,
                                                     job_id: str) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def deliver(n: int) -> None:
        with session_factory() as s:
            barrier.wait()
            if jobs.claim_job(s, job_id, worker_id=f"w{n}", lease_s=60) is not None:
                winners.append(f"w{n}")

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(winners) == 1
    job = _row(session_factory, job_id)
    assert job.attempts == 1 and job.worker_id == winners[0]


@BOTH
def test_a_worker_whose_lease_lapsed_writes_nothing_after_a_take_over(
        session_factory: Any, job_id: str, tmp_path: Path) -> None:
    from worker.callbacks import Heartbeat, LeaseLost

    artifacts = ArtifactStore(tmp_path / "artifacts")
    with session_factory() as s:
        assert jobs.claim_job(s, job_id, worker_id="late", lease_s=5) is not None
    late = _writer(session_factory, artifacts, job_id, worker_id="late", attempt=1)
    state = _State(1.0)
    late.on_epoch_end(state, state.history[-1])
    first = _row(session_factory, job_id)
    assert first.epoch == 1 and first.checkpoint_epoch == 1
    first_checkpoint = artifacts.get_bytes(first.checkpoint_uri)

    # the late worker stalls past its lease; another delivery takes the job over
    with session_factory() as s:
        later = utcnow() + timedelta(seconds=30)
        taken = jobs.claim_job(s, job_id, worker_id="next", lease_s=60, now=later)
        assert taken is not None and taken.attempts == 2
    nxt = _writer(session_factory, artifacts, job_id, worker_id="next", attempt=2,
                  resumed=first)

    # the late worker wakes up: its epoch 2 and its checkpoint are refused
    state = _State(1.0, 99.0)
    with pytest.raises(LeaseLost):
        late.on_epoch_end(state, state.history[-1])
    row = _row(session_factory, job_id)
    assert row.epoch == 1 and row.checkpoint_uri == first.checkpoint_uri
    assert artifacts.get_bytes(first.checkpoint_uri) == first_checkpoint  # untouched
    names = sorted(p.name for p in (tmp_path / "artifacts" / "jobs" / job_id).iterdir())
    assert names == [Path(first.checkpoint_uri).name]  # the refused one was removed
    beat = Heartbeat(session_factory=session_factory, job_id=job_id, worker_id="late",
                     lease_s=5, interval_s=1)
    beat.beat()
    assert beat.lease_lost
    with session_factory() as s:
        assert not jobs.finish_job(s, job_id, "failed", worker_id="late",
                                   error=("x", "late worker"))

    # the worker that holds the job goes on from the checkpoint and ends it
    state = _State(1.0, 0.5)
    nxt.on_epoch_end(state, state.history[-1])
    row = _row(session_factory, job_id)
    assert row.epoch == 2 and row.checkpoint_epoch == 2
    assert "-a2-e2" in row.checkpoint_uri
    assert not artifacts.exists(first.checkpoint_uri)  # replaced, then deleted
    with session_factory() as s:
        assert [r["train_loss"] for r in jobs.get_metrics(s, job_id)] == [1.0, 0.5]
        assert jobs.finish_job(s, job_id, "succeeded", worker_id="next")
    assert _row(session_factory, job_id).status == "succeeded"


def test_one_reconciler_sweep_per_period_across_processes(tmp_path: Path,
                                                          redis_url: str) -> None:
    """recover_jobs(lock_s=...) sweeps once per period however many API processes run it;
    the sweep re-queues a queued job whose broker message is gone, once."""
    import redis as redis_lib

    from messaging import celery_factory, reconcile
    from store.db import make_session_factory
    from store.keys import get_or_create_tenant
    from tests.faults.procs import fresh_database

    client = redis_lib.Redis.from_url(redis_url)
    celery = celery_factory.make_celery(redis_url, max_runtime_s=60)
    with fresh_database(tmp_path) as url:  # only this test's jobs in it
        factory = make_session_factory(url)
        try:
            client.delete(reconcile.RECOVER_LOCK)
            with factory() as s:
                tenant = get_or_create_tenant(s, "sweep")
                job, _ = jobs.create_job(s, tenant_id=tenant.id, spec=SPEC)
                s.get(Job, job.id).enqueued_at = utcnow() - timedelta(minutes=5)
                s.commit()
            before = client.llen("cpu")
            first = reconcile.recover_jobs(factory, client, celery, grace_s=10, lock_s=30)
            second = reconcile.recover_jobs(factory, client, celery, grace_s=10, lock_s=30)
            assert first == {"requeued": 1, "cancelled": 0}
            assert second == {"requeued": 0, "cancelled": 0}
            assert client.llen("cpu") == before + 1
            assert client.pttl(reconcile.RECOVER_LOCK) > 0
        finally:
            # leave no message or lock behind for the other tests sharing this Redis db
            for raw in client.lrange("cpu", 0, -1):
                if job.id.encode() in raw:
                    client.lrem("cpu", 0, raw)
            client.delete(reconcile.RECOVER_LOCK)
            factory.kw["bind"].dispose()
            celery.close()
            client.close()
