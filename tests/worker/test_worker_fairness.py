"""Fairness between tenants with real workers (SPEC 7, "no request can exhaust the
service"): one tenant's many queued jobs do not hold the queue, and a tenant never trains
more than MLP_MAX_RUNNING_JOBS_PER_TENANT jobs at once."""

from __future__ import annotations

import threading
import uuid

import pytest
from conftest import clear_queues, running_celery_worker, wait_for

from messaging import celery_factory, queues
from store import jobs
from store.models import Job

pytestmark = pytest.mark.slow

SPEC = {"dataset": {"builtin": "iris"}, "training": {"epochs": 2}, "device": "cpu"}


def _tenant(session_factory) -> str:
    from store.keys import get_or_create_tenant

    with session_factory() as s:
        return get_or_create_tenant(s, f"fair-{uuid.uuid4().hex[:8]}").id


def _submit(session_factory, sender, redis_client, tenant_id: str, spec: dict) -> str:
    """What the API does: store the job, then queue it at its tenant's fair priority."""
    with session_factory() as s:
        job, _ = jobs.create_job(s, tenant_id=tenant_id, spec=spec)
        priority = queues.fair_priority(jobs.jobs_ahead(s, job))
    queues.enqueue_job(sender, job.id, "cpu", redis=redis_client, priority=priority)
    return job.id


def _started(session_factory, job_ids: list[str]) -> list[str]:
    with session_factory() as s:
        rows = [s.get(Job, j, populate_existing=True) for j in job_ids]
    done = [r for r in rows if r.status == "succeeded"]
    return [r.id for r in sorted(done, key=lambda r: r.started_at)] \
        if len(done) == len(rows) else []


def test_a_tenants_queue_of_jobs_does_not_hold_back_another_tenants_job(
        database_url, redis_url, redis_client, session_factory, tmp_path, migrated_db):
    clear_queues(redis_client)
    sender = celery_factory.make_celery(redis_url)
    busy, other = _tenant(session_factory), _tenant(session_factory)
    mine = [_submit(session_factory, sender, redis_client, busy, SPEC) for _ in range(6)]
    theirs = _submit(session_factory, sender, redis_client, other, SPEC)
    with running_celery_worker(migrated_db, redis_url, tmp_path):
        order = wait_for(lambda: _started(session_factory, [*mine, theirs]), 120, 0.2)
    sender.close()
    # the other tenant's one job runs as soon as the first worker slot frees, not 7th
    assert order.index(theirs) <= 1, order
    assert [j for j in order if j != theirs] == mine  # each tenant's jobs keep their order


def test_a_tenant_never_runs_more_jobs_than_its_limit(
        redis_url, redis_client, session_factory, tmp_path, migrated_db):
    clear_queues(redis_client)
    sender = celery_factory.make_celery(redis_url)
    tenant = _tenant(session_factory)
    slow = {**SPEC, "training": {"epochs": 300}}
    job_ids: list[str] = []
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with session_factory() as s:
                seen.append(sum(s.get(Job, j, populate_existing=True).status == "running"
                                for j in list(job_ids)))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with running_celery_worker(migrated_db, redis_url, tmp_path / "a",
                                   MLP_MAX_RUNNING_JOBS_PER_TENANT="1") as a, \
                running_celery_worker(migrated_db, redis_url, tmp_path / "b",
                                      MLP_MAX_RUNNING_JOBS_PER_TENANT="1") as b:
            # both workers wait for work when the tenant's three jobs arrive
            job_ids += [_submit(session_factory, sender, redis_client, tenant, slow)
                        for _ in range(3)]
            wait_for(lambda: _started(session_factory, job_ids), 180, 0.2)
            logs = a["log"].read_text() + b["log"].read_text()
    finally:
        stop.set()
        watcher.join()
    sender.close()
    assert max(seen) == 1, "two workers, one tenant limited to one running job"
    assert "MLP_MAX_RUNNING_JOBS_PER_TENANT" in logs, "no job ever had to wait"
