"""Job creation, idempotency, listing, cancel, delete, and the 409s before success."""

from __future__ import annotations

import redis

from .conftest import BOTH_BACKENDS, SMALL_SPEC

pytestmark = BOTH_BACKENDS

SPEC = {"dataset": {"builtin": "iris"}, "training": {"epochs": 2}}


def _queue_holds(redis_url: str, queue: str, job_id: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        from messaging.celery_factory import queue_keys

        return any(job_id.encode() in m for key in queue_keys(queue)
                   for m in client.lrange(key, 0, -1))
    finally:
        client.close()


def test_create_job_stores_and_queues_it(client, auth, redis_url):
    r = client.post("/v1/jobs", headers=auth, json={**SPEC, "name": "first"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["name"] == "first"
    assert job["progress"] == {"epoch": 0, "epochs": 2}
    assert job["spec"]["model"]["input_dim"] == 4
    assert job["parameter_count"] == 5 * 64 + 65 * 64 + 65 * 3
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert job["error"] is None and job["artifacts"] is None
    assert _queue_holds(redis_url, "cpu", job["id"])
    assert client.get(r.headers["location"], headers=auth).json()["id"] == job["id"]


def test_cuda_jobs_go_to_the_gpu_queue_or_are_refused_without_a_gpu_worker(
        client, auth, redis_url, redis_client):
    from messaging.queues import gpu_worker_key

    r = client.post("/v1/jobs", headers=auth, json={**SPEC, "device": "cuda"})
    assert r.status_code == 503, r.text
    assert "no GPU worker" in r.json()["message"] and r.headers["retry-after"]
    assert client.get("/v1/jobs", headers=auth).json()["items"] == []
    redis_client.set(gpu_worker_key("test-gpu-host"), "1", ex=30)
    try:
        r = client.post("/v1/jobs", headers=auth, json={**SPEC, "device": "cuda"})
    finally:
        redis_client.delete(gpu_worker_key("test-gpu-host"))
    assert r.status_code == 201
    assert _queue_holds(redis_url, "gpu", r.json()["id"])
    assert not _queue_holds(redis_url, "cpu", r.json()["id"])


def test_create_rejects_a_bad_spec_and_stores_nothing(client, auth):
    r = client.post("/v1/jobs", headers=auth, json={**SPEC, "optimiser": "adam"})
    assert r.status_code == 422
    assert "optimiser" in r.json()["message"]
    assert client.get("/v1/jobs", headers=auth).json()["items"] == []


def test_idempotency_key(client, auth):
    headers = {**auth, "Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", headers=headers, json=SPEC)
    again = client.post("/v1/jobs", headers=headers, json=SPEC)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    other = client.post("/v1/jobs", headers=headers, json={**SPEC, "name": "other"})
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["message"]
    assert len(client.get("/v1/jobs", headers=auth).json()["items"]) == 1
    # the key is per tenant
    fresh = client.post("/v1/jobs", headers={**headers, "Authorization": "x"}, json=SPEC)
    assert fresh.status_code == 401


def test_list_pagination_and_filters(client, auth):
    ids = [client.post("/v1/jobs", headers=auth,
                       json={**SPEC, "name": "even" if i % 2 == 0 else "odd"}).json()["id"]
           for i in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", headers=auth, params=params).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once
    named = client.get("/v1/jobs", headers=auth, params={"name": "even"}).json()["items"]
    assert [j["id"] for j in named] == [ids[4], ids[2], ids[0]]
    cancelled = client.get("/v1/jobs", headers=auth,
                           params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", headers=auth, params={"cursor": "garbage!"}).status_code \
        in (400, 422)
    assert client.get("/v1/jobs", headers=auth, params={"limit": 0}).status_code == 422
    assert client.get("/v1/jobs", headers=auth, params={"limit": 101}).status_code == 422
    assert client.get("/v1/jobs", headers=auth, params={"status": "nope"}).status_code == 422


def test_cancel_a_queued_job(client, auth):
    job_id = client.post("/v1/jobs", headers=auth, json=SPEC).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert again.status_code == 409
    assert "finished" in again.json()["message"]


def test_cancel_a_running_job_sets_the_flag(harness, client, auth, redis_url):
    from messaging.live_events import cancel_key
    from store.jobs import claim_job

    job_id = client.post("/v1/jobs", headers=auth, json=SPEC).json()["id"]
    with harness.services.session_factory() as session:
        claim_job(session, job_id, worker_id="w1", lease_s=60)
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 202
    assert r.json()["status"] == "cancelling"
    flag = redis.Redis.from_url(redis_url)
    try:
        assert flag.exists(cancel_key(job_id))
    finally:
        flag.close()
    # still active: cannot be deleted
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 409


def test_delete(harness, client, auth):
    job_id = client.post("/v1/jobs", headers=auth, json=SPEC).json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 409
    assert "queued" in r.json()["message"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    harness.services.artifacts.put_bytes(f"jobs/{job_id}/checkpoint.pt", b"x")
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 404
    assert not harness.services.artifacts.exists(f"jobs/{job_id}/checkpoint.pt")
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 404


def test_results_are_409_before_success(client, auth):
    job_id = client.post("/v1/jobs", headers=auth, json=SMALL_SPEC).json()["id"]
    for method, path, body in (("GET", "weights", None), ("GET", "model", None),
                               ("POST", "predict", {"x": [[1, 2, 3, 4]]})):
        r = client.request(method, f"/v1/jobs/{job_id}/{path}", headers=auth, json=body)
        assert r.status_code == 409, (path, r.text)
        assert "queued" in r.json()["message"]
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth).json()
    assert metrics == {"job_id": job_id, "epochs": []}


def test_unknown_job_is_404(client, auth):
    r = client.get("/v1/jobs/job_doesnotexist", headers=auth)
    assert r.status_code == 404
    assert "job_doesnotexist" in r.json()["message"]


def test_listings_summarise_inline_data(client, auth):
    """Inline data is echoed on the job itself, not in every listing (SPEC 7)."""
    x = [[float(i), float(i % 3)] for i in range(200)]
    spec = {"dataset": {"inline": {"x": x, "y": [i % 2 for i in range(200)]}},
            "training": {"epochs": 1}}
    r = client.post("/v1/jobs", headers=auth, json=spec)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    listed = next(j for j in client.get("/v1/jobs", headers=auth).json()["items"]
                  if j["id"] == job_id)
    assert listed["spec"]["dataset"]["inline"]["rows"] == 200
    assert listed["spec"]["dataset"]["inline"]["columns"] == 2
    assert "x" not in listed["spec"]["dataset"]["inline"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["spec"]["dataset"][
        "inline"]["x"] == x
