"""Apps with special settings (Redis down, a fixed API key, auth off, tiny limits), each on
a SQLite file of its own, and start-up without torch."""

from __future__ import annotations

import subprocess
import sys

from .conftest import CLOSED_REDIS


def test_import_does_not_load_torch():
    code = ("import sys; import service.app, service.routes.jobs; "
            "assert 'torch' not in sys.modules and 'worker' not in sys.modules, 'torch loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readyz_names_redis_when_it_is_down(make_app):
    app = make_app(redis_url=CLOSED_REDIS)
    r = app.client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "down": ["redis"]}
    assert app.client.get("/healthz").status_code == 200


def test_api_key_from_settings_is_tenant_default(make_app):
    app = make_app(api_key="s3cret-key-for-tests-0123")
    assert app.client.get("/v1/jobs", headers={
        "Authorization": "Bearer s3cret-key-for-tests-0123"}).status_code == 200
    assert app.client.get("/v1/jobs", headers={
        "Authorization": "Bearer s3cret-key-for-tests-0124"}).status_code == 401


def test_auth_off_makes_everyone_tenant_default(make_app):
    app = make_app(auth=False)
    r = app.client.post("/v1/jobs", json={"dataset": {"builtin": "iris"}})
    assert r.status_code == 201
    assert app.client.get(r.headers["location"]).status_code == 200
    assert [j["id"] for j in app.client.get("/v1/jobs").json()["items"]] == [r.json()["id"]]


def test_rate_limit_answers_429_with_retry_after(make_app):
    app = make_app(rate_limit_per_minute=3)
    headers = app.auth()
    codes = [app.client.get("/v1/jobs", headers=headers).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = app.client.get("/v1/jobs", headers=headers)
    assert int(r.headers["retry-after"]) >= 1
    assert "MLP_RATE_LIMIT_PER_MINUTE" in r.json()["message"]
    # another key has its own budget
    assert app.client.get("/v1/jobs", headers=app.auth()).status_code == 200


def test_json_body_over_the_limit_is_413(make_app):
    app = make_app(max_request_bytes=4096)
    headers = app.auth()
    x = [[0.5] * 10 for _ in range(200)]
    r = app.client.post("/v1/specs/validate", headers=headers,
                        json={"dataset": {"inline": {"x": x, "y": [0] * 200}}})
    assert r.status_code == 413
    assert "MLP_MAX_REQUEST_BYTES" in r.json()["message"]
    # chunked, without Content-Length
    body = b'{"dataset": {"builtin": "iris"}, "name": "' + b"a" * 5000 + b'"}'
    r = app.client.post("/v1/specs/validate", headers={**headers,
                        "Content-Type": "application/json"}, content=iter([body]))
    assert r.status_code == 413


def test_unexpected_error_is_a_generic_500(make_app, monkeypatch):
    import service.routes.catalog as catalog_routes

    def boom():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(catalog_routes, "engine_catalog", boom)
    app = make_app(raise_server_exceptions=False)
    r = app.client.get("/v1/catalog", headers=app.auth())
    assert r.status_code == 500
    assert r.json()["message"].startswith("internal server error")
    assert "secret" not in r.text and "Traceback" not in r.text


def test_active_job_limit_is_429(make_app):
    app = make_app(max_active_jobs_per_tenant=2)
    headers = app.auth()
    spec = {"dataset": {"builtin": "iris"}}
    assert [app.client.post("/v1/jobs", headers=headers, json=spec).status_code
            for _ in range(2)] == [201, 201]
    r = app.client.post("/v1/jobs", headers=headers, json=spec)
    assert r.status_code == 429
    assert "max_active_jobs_per_tenant=2" in r.json()["message"]
    # another tenant is not affected
    assert app.client.post("/v1/jobs", headers=app.auth(), json=spec).status_code == 201


def test_redis_down_at_create_is_503_then_the_job_is_queued_again(make_app, redis_url):
    """The job is stored before it is sent; an API started later (Redis back) finds it
    queued in the database with no message in Redis and sends it."""
    import time

    import redis
    from sqlalchemy import select

    from store.models import Job

    down = make_app(redis_url=CLOSED_REDIS)
    r = down.client.post("/v1/jobs", headers=down.auth(), json={"dataset": {"builtin": "iris"}})
    assert r.status_code == 503, r.text
    assert "Redis" in r.json()["message"]
    job_id = r.headers["location"].rsplit("/", 1)[1]
    with down.services.session_factory() as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
        assert job is not None and job.status == "queued"

    make_app(database_url=down.settings.database_url, reconcile_interval_s=3600,
             reconcile_after_s=0)
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 10
        while not any(job_id.encode() in m for m in client.lrange("cpu", 0, -1)):
            assert time.monotonic() < deadline, "the reconciler did not queue the job"
            time.sleep(0.1)
    finally:
        client.close()


def test_reconciler_requeues_jobs_redis_lost(make_app, redis_url):
    import redis

    from service.reconciler import reconcile_once

    app = make_app(reconcile_after_s=0)
    job_id = app.client.post("/v1/jobs", headers=app.auth(),
                             json={"dataset": {"builtin": "iris"}}).json()["id"]
    client = redis.Redis.from_url(redis_url)
    try:
        # Redis "restarted empty": the message and its marker are gone
        for message in client.lrange("cpu", 0, -1):
            if job_id.encode() in message:
                client.lrem("cpu", 0, message)
        client.delete(f"mlp:jobs:{job_id}:queued")
        counts = reconcile_once(app.services)
        assert counts is not None and counts["requeued"] >= 1
        assert any(job_id.encode() in m for m in client.lrange("cpu", 0, -1))
    finally:
        client.close()


def test_dataset_bytes_per_tenant_limit(make_app):
    from .conftest import csv_bytes, upload

    content = csv_bytes(40)
    app = make_app(max_dataset_bytes_per_tenant=int(len(content) * 1.5))
    headers = app.auth()
    assert upload(app.client, headers, content, target="label").status_code == 201
    r = upload(app.client, headers, content, target="label")
    assert r.status_code == 409
    assert "MLP_MAX_DATASET_BYTES_PER_TENANT" in r.json()["message"]
