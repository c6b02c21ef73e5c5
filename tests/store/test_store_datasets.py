"""The dataset repository, on SQLite and PostgreSQL: pages, the quota's byte count, and the
races of SPEC section 7 (a dataset deleted while a job is created from it; concurrent
creates against the active-jobs limit), with real concurrent sessions."""

from __future__ import annotations

import threading
import uuid

import pytest

from store import datasets, jobs
from store.errors import (
    ActiveJobsLimit,
    DatasetGone,
    DatasetInUse,
    DatasetQuota,
    InvalidCursor,
    JobStateError,
)
from store.models import Dataset, utcnow

BOTH_BACKENDS = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True)
pytestmark = BOTH_BACKENDS

SPEC = {"dataset": {"builtin": "iris"}, "training": {"epochs": 1}}


def new_job(session, tenant, **kw):
    job, created = jobs.create_job(session, tenant_id=tenant.id, spec=SPEC, **kw)
    assert created
    return job


def new_dataset(session, tenant, dataset_id: str | None = None, *, nbytes: int = 100,
                name: str = "d") -> Dataset:
    row = Dataset(id=dataset_id or f"ds_{uuid.uuid4().hex}", tenant_id=tenant.id, name=name,
                  format="csv", target=["y"], n_rows=3, n_features=2, n_outputs=1,
                  n_classes=2, class_labels=None, feature_names=["a", "b"],
                  target_numeric=True, multilabel=False, bytes=nbytes, sha256="0" * 64,
                  uri="datasets/x/data.csv", created_at=utcnow())
    return datasets.add_dataset(session, row)


def test_pages_newest_first_and_bytes(db_session, tenant):
    made = [new_dataset(db_session, tenant, nbytes=10 * (i + 1), name=f"n{i % 2}")
            for i in range(5)]
    assert datasets.stored_bytes(db_session, tenant.id) == 150
    seen, cursor = [], None
    while True:
        page, cursor = datasets.list_datasets(db_session, tenant.id, limit=2, cursor=cursor)
        seen += [d.id for d in page]
        if cursor is None:
            break
    assert seen == [d.id for d in reversed(made)]
    named, _ = datasets.list_datasets(db_session, tenant.id, name="n0")
    assert {d.id for d in named} == {made[0].id, made[2].id, made[4].id}
    assert datasets.list_datasets(db_session, tenant.id, name="a\x00b") == ([], None)
    with pytest.raises(InvalidCursor):
        datasets.list_datasets(db_session, tenant.id, cursor="not-a-cursor")
    assert datasets.get_dataset_for_tenant(db_session, "someone-else", made[0].id) is None
    assert datasets.get_dataset_for_tenant(db_session, tenant.id, made[0].id).id == made[0].id


def test_delete_refuses_a_dataset_in_use_and_a_job_refuses_a_deleted_dataset(
        db_session, tenant):
    ds = new_dataset(db_session, tenant)
    job, _ = jobs.create_job(db_session, tenant_id=tenant.id, spec=SPEC, dataset_id=ds.id)
    with pytest.raises(DatasetInUse):
        datasets.delete_dataset(db_session, ds)
    jobs.request_cancel(db_session, job)  # queued: cancelled at once
    datasets.delete_dataset(db_session, ds)
    assert datasets.get_dataset_for_tenant(db_session, tenant.id, ds.id) is None
    with pytest.raises(DatasetGone):
        jobs.create_job(db_session, tenant_id=tenant.id, spec=SPEC, dataset_id=ds.id)


def test_a_job_on_a_dataset_holds_it_until_it_ends(db_session, tenant):
    new_dataset(db_session, tenant, "ds_1")
    job = new_job(db_session, tenant, dataset_id="ds_1")
    assert datasets.dataset_in_use(db_session, "ds_1")
    with pytest.raises(JobStateError):
        jobs.delete_job(db_session, job)
    jobs.claim_job(db_session, job.id, worker_id="w", lease_s=30)
    jobs.record_epochs(db_session, job.id, [{"epoch": 1, "train_loss": 1.0}])
    jobs.finish_job(db_session, job.id, "succeeded")
    job = jobs.get_job(db_session, job.id)
    assert not datasets.dataset_in_use(db_session, "ds_1")
    jobs.delete_job(db_session, job)
    assert jobs.get_job(db_session, job.id) is None
    assert jobs.get_metrics(db_session, job.id) == []
    assert jobs.count_by_status(db_session)["succeeded"] >= 0


def _race(n: int, work) -> list[BaseException | object]:
    """Run `work(i)` in n threads released at once; their results or errors."""
    barrier = threading.Barrier(n)
    out: list[BaseException | object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_a_delete_racing_a_job_create_never_both_succeed(session_factory, db_session, tenant):
    for _ in range(6):
        ds = new_dataset(db_session, tenant)

        def work(i: int, ds_id: str = ds.id) -> object:
            with session_factory() as s:
                if i == 0:
                    return datasets.delete_dataset(s, s.get(Dataset, ds_id))
                return jobs.create_job(s, tenant_id=tenant.id, spec=SPEC, dataset_id=ds_id)

        deleted, created = _race(2, work)
        if deleted is None:  # the delete won: the job must have failed
            assert isinstance(created, DatasetGone), created
        else:
            assert isinstance(deleted, DatasetInUse) and isinstance(created, tuple), \
                (deleted, created)


def test_parallel_creates_never_pass_the_active_jobs_limit(session_factory, db_session,
                                                           tenant):
    limit = 5
    for _ in range(3):
        jobs.create_job(db_session, tenant_id=tenant.id, spec=SPEC, max_active=limit)

    def work(i: int) -> object:
        with session_factory() as s:
            return jobs.create_job(s, tenant_id=tenant.id, spec=SPEC, max_active=limit)

    results = _race(8, work)
    made = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, ActiveJobsLimit)]
    assert len(made) == 2 and len(refused) == 6, results
    assert jobs.count_by_status(db_session)["queued"] >= limit
    active, _ = jobs.list_jobs(db_session, tenant.id, status="queued", limit=100)
    assert len(active) == limit


def test_parallel_uploads_never_pass_the_stored_bytes_quota(session_factory, tenant):
    def work(i: int) -> object:
        with session_factory() as s:
            row = Dataset(id=f"ds_{uuid.uuid4().hex}", tenant_id=tenant.id, name="d",
                          format="csv", target=["y"], n_rows=1, n_features=1,
                          feature_names=["a"], bytes=10, stored_bytes=100, sha256="0" * 64,
                          uri="x", created_at=utcnow())
            return datasets.add_dataset(s, row, max_bytes=450)

    results = _race(8, work)
    assert sum(isinstance(r, Dataset) for r in results) == 4, results
    assert all(isinstance(r, Dataset | DatasetQuota) for r in results), results
    with session_factory() as s:
        assert datasets.stored_bytes(s, tenant.id) == 400
