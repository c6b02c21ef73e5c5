from __future__ import annotations

from datetime import timedelta

import pytest

from service.schemas import JobPublic
from store import jobs
from store.errors import IdempotencyConflict, InvalidCursor, JobStateError
from store.models import JobMetric, JobStatus, utcnow

BOTH_BACKENDS = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True)
pytestmark = BOTH_BACKENDS

SPEC = {"name": "iris", "dataset": {"builtin": "iris"}, "task": "classification",
        "training": {"epochs": 5}}


def new_job(session, tenant, **kw):
    job, created = jobs.create_job(session, tenant_id=tenant.id, spec=SPEC, **kw)
    assert created
    return job


def test_create_and_public_view(db_session, tenant):
    job = new_job(db_session, tenant, parameter_count=123)
    public = JobPublic.from_row(job).model_dump(mode="json")
    assert set(public) == {"id", "name", "status", "spec", "created_at", "started_at",
                           "finished_at", "progress", "attempts", "device",
                           "parameter_count", "metrics", "error", "artifacts", "findings",
                           "sweep_id", "trial"}
    assert public["status"] == "queued"
    assert public["name"] == "iris"
    assert public["progress"] == {"epoch": 0, "epochs": 5}
    assert public["created_at"].endswith("Z")
    assert public["started_at"] is None and public["error"] is None
    assert public["artifacts"] is None and public["metrics"] is None
    assert public["findings"] == []
    assert public["parameter_count"] == 123


def test_idempotency_key(db_session, tenant):
    a, created = jobs.create_job(db_session, tenant_id=tenant.id, spec=SPEC,
                                 idempotency_key="k1", request_hash="h1")
    b, created_again = jobs.create_job(db_session, tenant_id=tenant.id, spec=SPEC,
                                       idempotency_key="k1", request_hash="h1")
    assert created and not created_again and a.id == b.id
    with pytest.raises(IdempotencyConflict):
        jobs.create_job(db_session, tenant_id=tenant.id, spec=SPEC,
                        idempotency_key="k1", request_hash="h2")


def test_tenant_isolation_and_listing(db_session, tenant):
    from store.keys import get_or_create_tenant

    other = get_or_create_tenant(db_session, f"other-{tenant.id}")
    mine = [new_job(db_session, tenant) for _ in range(5)]
    theirs = new_job(db_session, other)
    assert jobs.get_job_for_tenant(db_session, tenant.id, theirs.id) is None
    assert jobs.get_job_for_tenant(db_session, tenant.id, mine[0].id).id == mine[0].id

    seen, cursor = [], None
    while True:
        page, cursor = jobs.list_jobs(db_session, tenant.id, limit=2, cursor=cursor)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == [j.id for j in reversed(mine)]  # newest first, each once
    page, _ = jobs.list_jobs(db_session, tenant.id, status="running")
    assert page == []
    with pytest.raises(InvalidCursor):
        jobs.list_jobs(db_session, tenant.id, cursor="garbage!")


def test_claim_semantics(db_session, tenant):
    job = new_job(db_session, tenant)
    claimed = jobs.claim_job(db_session, job.id, worker_id="w1", lease_s=30)
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert claimed.started_at is not None
    # a second delivery while the lease is live does nothing
    assert jobs.claim_job(db_session, job.id, worker_id="w2", lease_s=30) is None
    assert jobs.get_job(db_session, job.id).worker_id == "w1"
    # after the lease expired, the next delivery takes it over and counts an attempt
    later = utcnow() + timedelta(seconds=31)
    again = jobs.claim_job(db_session, job.id, worker_id="w2", lease_s=30, now=later)
    assert again is not None and again.attempts == 2 and again.worker_id == "w2"
    # the first worker has lost it
    assert jobs.renew_lease(db_session, job.id, worker_id="w1", lease_s=30) is None
    assert jobs.renew_lease(db_session, job.id, worker_id="w2", lease_s=30) == "running"


def test_max_attempts_fails_the_job(db_session, tenant):
    job = new_job(db_session, tenant)
    t = utcnow()
    for attempt in range(1, 4):
        t += timedelta(seconds=100)
        got = jobs.claim_job(db_session, job.id, worker_id=f"w{attempt}", lease_s=10,
                             max_attempts=3, now=t)
        assert got is not None and got.attempts == attempt
    t += timedelta(seconds=100)
    assert jobs.claim_job(db_session, job.id, worker_id="w4", lease_s=10, max_attempts=3,
                          now=t) is None
    job = jobs.get_job(db_session, job.id)
    assert job.status == "failed" and job.attempts == 3
    public = JobPublic.from_row(job).model_dump(mode="json")
    assert public["error"]["type"] == "max_attempts"
    assert "MLP_MAX_ATTEMPTS=3" in public["error"]["message"]


def test_terminal_and_cancelled_jobs_are_not_claimed(db_session, tenant):
    job = new_job(db_session, tenant)
    jobs.request_cancel(db_session, job)
    assert job.status == "cancelled" and job.finished_at is not None
    assert jobs.claim_job(db_session, job.id, worker_id="w", lease_s=10) is None
    with pytest.raises(JobStateError):
        jobs.request_cancel(db_session, job)

    job2 = new_job(db_session, tenant)
    jobs.claim_job(db_session, job2.id, worker_id="w", lease_s=10)
    assert jobs.finish_job(db_session, job2.id, "succeeded", worker_id="w")
    assert not jobs.finish_job(db_session, job2.id, "failed")  # already terminal
    assert jobs.claim_job(db_session, job2.id, worker_id="w", lease_s=10,
                          now=utcnow() + timedelta(hours=1)) is None


def test_queued_jobs_are_claimed_together_and_only_those(db_session, tenant):
    from store.locks import hold_jobs

    queued = [new_job(db_session, tenant) for _ in range(3)]
    taken, cancelled = new_job(db_session, tenant), new_job(db_session, tenant)
    jobs.claim_job(db_session, taken.id, worker_id="other", lease_s=60)
    jobs.request_cancel(db_session, cancelled)
    order = [queued[2].id, taken.id, queued[0].id, cancelled.id, queued[1].id]
    got = jobs.claim_queued(db_session, order, worker_id="w", lease_s=60)
    assert [j.id for j in got] == [queued[2].id, queued[0].id, queued[1].id]  # in order
    assert all(j.status == "running" and j.worker_id == "w" and j.attempts == 1
               and j.started_at is not None and j.lease_expires_at is not None for j in got)
    assert jobs.get_job(db_session, taken.id).worker_id == "other"  # left as they were
    assert jobs.get_job(db_session, cancelled.id).status == "cancelled"
    assert jobs.claim_queued(db_session, order, worker_id="w2", lease_s=60) == []
    # a pack's writes hold the rows of the jobs its worker holds, only those
    held = hold_jobs(db_session, order, "w")
    db_session.commit()
    assert held == {j.id for j in queued}
    for job_id in order:  # ended: the reconciler tests of this database see none running
        jobs.finish_job(db_session, job_id, "failed", error=("test", "ended by the test"))


def test_cancel_running_job(db_session, tenant):
    job = new_job(db_session, tenant)
    jobs.claim_job(db_session, job.id, worker_id="w", lease_s=30)
    job = jobs.request_cancel(db_session, jobs.get_job(db_session, job.id))
    assert job.status == "cancelling"
    assert jobs.request_cancel(db_session, job).status == "cancelling"  # repeat is fine
    assert jobs.renew_lease(db_session, job.id, worker_id="w", lease_s=30) == "cancelling"
    # a cancelling job whose worker died ends cancelled on the next delivery
    assert jobs.claim_job(db_session, job.id, worker_id="w2", lease_s=30,
                          now=utcnow() + timedelta(seconds=60)) is None
    assert jobs.get_job(db_session, job.id).status == "cancelled"


def test_record_epochs_once_each_and_summary(db_session, tenant):
    job = new_job(db_session, tenant)
    jobs.claim_job(db_session, job.id, worker_id="w", lease_s=30)

    def rec(e, loss, acc):
        return {"epoch": e, "train_loss": loss + 0.1, "val_loss": loss, "val_accuracy": acc,
                "lr": 0.01, "epoch_seconds": 0.01, "diagnostics": {"x": float("nan")}}

    jobs.record_epochs(db_session, job.id, [rec(1, 1.0, 0.5), rec(2, 0.5, 0.7)])
    jobs.record_epochs(db_session, job.id, [rec(3, 0.7, 0.9)],
                       checkpoint_uri="jobs/x/checkpoint.pt", checkpoint_epoch=3)
    # a resumed attempt repeats epochs 2..3: ignored, progress does not go back
    jobs.record_epochs(db_session, job.id, [rec(2, 9.0, 0.0), rec(3, 9.0, 0.0)])
    job = jobs.get_job(db_session, job.id)
    assert job.epoch == 3 and job.checkpoint_epoch == 3
    rows = jobs.get_metrics(db_session, job.id)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[1]["val_loss"] == 0.5
    assert rows[0]["diagnostics"]["x"] is None  # NaN stored as null
    assert [r["epoch"] for r in jobs.get_metrics(db_session, job.id, since=1)] == [2, 3]
    summary = JobPublic.from_row(job).model_dump(mode="json")["metrics"]
    assert summary["best_epoch"] == 2 and summary["monitor"] == "val_loss"
    assert summary["final"]["epoch"] == 3 and summary["final"]["val_loss"] == 0.7
    # best: the record of the best epoch (by val_loss), every value from that epoch
    assert summary["best"]["epoch"] == 2
    assert summary["best"]["val_loss"] == 0.5 and summary["best"]["val_accuracy"] == 0.7
    # each metric's own best, with the epoch that reached it
    assert summary["best_per_metric"]["val_loss"] == {"value": 0.5, "epoch": 2}
    assert summary["best_per_metric"]["val_accuracy"] == {"value": 0.9, "epoch": 3}
    assert db_session.query(JobMetric).filter_by(job_id=job.id).count() == 3


def test_finish_with_weights_and_error(db_session, tenant):
    job = new_job(db_session, tenant)
    jobs.claim_job(db_session, job.id, worker_id="w", lease_s=30)
    assert jobs.finish_job(db_session, job.id, JobStatus.SUCCEEDED, worker_id="w", weights={
        "uri": "jobs/j/weights.safetensors", "bytes": 10, "sha256": "a" * 64,
        "pt_uri": "jobs/j/weights.pt", "pt_bytes": 12, "pt_sha256": "b" * 64},
        summary_updates={"best_epoch": 4})
    public = JobPublic.from_row(jobs.get_job(db_session, job.id)).model_dump(mode="json")
    assert public["status"] == "succeeded" and public["finished_at"].endswith("Z")
    assert public["artifacts"] == {
        "weights": {"format": "safetensors", "bytes": 10, "sha256": "a" * 64},
        "weights_pt": {"format": "pt", "bytes": 12, "sha256": "b" * 64}}
    assert public["metrics"]["best_epoch"] == 4

    job2 = new_job(db_session, tenant)
    jobs.claim_job(db_session, job2.id, worker_id="w", lease_s=30)
    assert not jobs.finish_job(db_session, job2.id, "failed", worker_id="someone-else")
    jobs.finish_job(db_session, job2.id, "failed", error=("diverged", "loss became NaN at epoch 7"))
    assert JobPublic.from_row(jobs.get_job(db_session, job2.id)).model_dump(mode="json")["error"] == {
        "type": "diverged", "message": "loss became NaN at epoch 7"}


def test_claims_respect_the_running_limit_per_tenant(session_factory, db_session, tenant):
    import threading

    from store.keys import get_or_create_tenant

    mine = [new_job(db_session, tenant) for _ in range(4)]
    other = get_or_create_tenant(db_session, f"other-{tenant.id}")
    theirs = new_job(db_session, other)
    results: list[object] = [None] * len(mine)
    barrier = threading.Barrier(len(mine))

    def claim(i: int) -> None:
        with session_factory() as s:
            barrier.wait()
            results[i] = jobs.claim_job(s, mine[i].id, worker_id=f"w{i}", lease_s=30,
                                        max_running_per_tenant=2)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(mine))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [r for r in results if r is not None]
    assert len(claimed) == 2, results
    # the others stay queued (nothing counted against their attempts) ...
    waiting = [j for j, r in zip(mine, results, strict=True) if r is None]
    for job in waiting:
        row = jobs.get_job(db_session, job.id)
        assert row.status == "queued" and row.attempts == 0
    # ... another tenant is not held back, and a finished job frees a place
    assert jobs.claim_job(db_session, theirs.id, worker_id="x", lease_s=30,
                          max_running_per_tenant=2) is not None
    jobs.finish_job(db_session, claimed[0].id, "succeeded")
    assert jobs.claim_job(db_session, waiting[0].id, worker_id="y", lease_s=30,
                          max_running_per_tenant=2) is not None


def test_jobs_ahead_counts_the_tenants_earlier_active_jobs(db_session, tenant):
    made = [new_job(db_session, tenant) for _ in range(3)]
    assert [jobs.jobs_ahead(db_session, j) for j in made] == [0, 1, 2]
    jobs.request_cancel(db_session, made[0])
    assert jobs.jobs_ahead(db_session, made[2]) == 1
