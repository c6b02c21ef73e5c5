"""Load: 200 small jobs submitted concurrently by 20 clients to the real API, run by two
Celery workers (concurrency 1 each): every accepted job ends in exactly one terminal state,
none is lost, none trains twice (training starts are counted in the workers' logs), and
every job's metrics are complete."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.faults.procs import TERMINAL, Stack, tiny_spec, training_starts

pytestmark = pytest.mark.slow

JOBS = 200
CLIENTS = 20
DEADLINE_S = 180  # the whole test is bounded: what is not done by then counts as lost


def _submit_all(stack: Stack, key: str, n: int, client_no: int,
                accepted: list[str], refused: list[str], owners: dict[str, str]) -> None:
    """Submit `n` jobs, each with an Idempotency-Key, retrying what may be retried."""
    with stack.http(key, timeout=30) as client:
        for i in range(n):
            spec = tiny_spec(f"load-{client_no}-{i}", epochs=1 + i % 2, rows=6 + i % 5,
                             seed=i)
            headers = {"Idempotency-Key": uuid.uuid4().hex}
            for attempt in range(10):
                try:
                    r = client.post("/v1/jobs", json=spec, headers=headers)
                except httpx.TransportError:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if r.status_code == 201:
                    accepted.append(r.json()["id"])
                    owners[r.json()["id"]] = key
                    break
                if r.status_code in (429, 503):
                    time.sleep(float(r.headers.get("Retry-After", "0.5")) / 10)
                    continue
                refused.append(f"{r.status_code} {r.text[:200]}")
                break
            else:
                refused.append("gave up after 10 tries")


def test_200_jobs_from_20_clients_on_two_workers(stack: Stack) -> None:
    keys = [stack.new_key(f"load-{uuid.uuid4().hex[:8]}") for _ in range(CLIENTS)]
    accepted: list[str] = []
    refused: list[str] = []
    owners: dict[str, str] = {}
    per_client = JOBS // CLIENTS
    t0 = time.monotonic()
    threads = [threading.Thread(target=_submit_all,
                                args=(stack, key, per_client, n, accepted, refused, owners))
               for n, key in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE_S)
    submitted_in = time.monotonic() - t0

    # wait for every accepted job, as the clients would see it
    statuses: dict[str, str] = {}
    with stack.http(keys[0]) as probe:
        while time.monotonic() - t0 < DEADLINE_S:
            statuses = {}
            for key in keys:
                page = probe.get("/v1/jobs", params={"limit": 100},
                                 headers={"Authorization": f"Bearer {key}"}).json()
                statuses.update({j["id"]: j["status"] for j in page["items"]})
            if all(statuses.get(j) in TERMINAL for j in accepted):
                break
            time.sleep(0.5)
    wall = time.monotonic() - t0

    completed = [j for j in accepted if statuses.get(j) in TERMINAL]
    lost = [j for j in accepted if statuses.get(j) not in TERMINAL]
    starts = training_starts(stack.worker_logs())
    duplicated = [j for j in accepted if starts.get(j, 0) > 1]
    never_started = [j for j in accepted if starts.get(j, 0) == 0]
    print(f"\nload: accepted={len(accepted)} completed={len(completed)} lost={len(lost)} "
          f"duplicated={len(duplicated)} refused={len(refused)} submit={submitted_in:.1f}s "
          f"wall={wall:.1f}s ({len(completed) / wall:.1f} jobs/s)")

    assert not refused, refused[:5]
    assert len(accepted) == len(set(accepted)) == JOBS
    assert not lost, [(j, statuses.get(j)) for j in lost[:10]]
    assert not duplicated and not never_started, (duplicated[:5], never_started[:5])
    assert {statuses[j] for j in accepted} == {"succeeded"}
    # exactly one terminal state: finished once, by the one attempt that trained
    incomplete: list[tuple[str, Any]] = []
    for j in accepted:
        row = stack.job(j)
        assert row.attempts == 1 and row.finished_at is not None, (j, row.attempts)
        if stack.epochs(j) != list(range(1, row.epochs + 1)) or row.epoch != row.epochs:
            incomplete.append((j, stack.epochs(j)))
    assert not incomplete, incomplete[:5]
    # and the clients see complete metrics
    with stack.http() as client:
        for j in accepted:
            auth = {"Authorization": f"Bearer {owners[j]}"}
            body = client.get(f"/v1/jobs/{j}/metrics", headers=auth).json()
            job = client.get(f"/v1/jobs/{j}", headers=auth).json()
            assert [e["epoch"] for e in body["epochs"]] == \
                list(range(1, job["spec"]["training"]["epochs"] + 1))
            assert job["metrics"]["final"]["epoch"] == job["spec"]["training"]["epochs"]


def test_far_more_requests_than_threads_never_starve_the_database_pool(stack: Stack) -> None:
    """With 2 request threads (a pool of 6 connections) and 30 clients reading a job at
    once: every request is answered 200. A request holds a connection only while one of
    its threads runs: dependencies give theirs back before the request waits for its next
    thread (FastAPI runs each in a thread of its own), else the requests holding every
    connection would wait for the threads held by requests waiting for a connection."""
    assert stack.api is not None
    stack.api.stop()
    stack.start_api(MLP_REQUEST_THREADS="2", MLP_DB_POOL_TIMEOUT_S="3")
    try:
        key = stack.new_key()
        with stack.http(key) as client:
            r = client.post("/v1/jobs", json=tiny_spec("read-me"))
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
        codes: dict[int, int] = {}
        lock = threading.Lock()

        def reader() -> None:
            with stack.http(key, timeout=30) as c:
                for _ in range(10):
                    status = c.get(f"/v1/jobs/{job_id}").status_code
                    with lock:
                        codes[status] = codes.get(status, 0) + 1

        threads = [threading.Thread(target=reader) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert codes == {200: 300}, codes
    finally:
        stack.api.stop()  # the next test gets the API with the stack's settings
