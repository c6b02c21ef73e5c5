"""Apps with special settings (Redis down, a fixed API key, auth off, tiny limits), each on
a SQLite file of its own, and start-up without torch; the API key rules, keys made by
`mlpctl keys create`, and the throttle on failed authentications."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


# --------------------------------------------------------------------------- API keys


def test_a_short_api_key_stops_start_up_without_showing_it(monkeypatch):
    from service.settings import ConfigError, Settings

    short = "Kq7-too-short"  # 13 characters, distinctive enough to search for
    monkeypatch.setenv("MLP_API_KEY", short)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert "MLP_API_KEY" in message and "at least 16 characters" in message
    assert short not in message and "13" not in message
    # nor in what a traceback of it would print (the pydantic error is not chained)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(ConfigError, match="no spaces") as info:
        Settings.load(api_key="a key with spaces in it")
    assert "a key with spaces" not in str(info.value)


def test_a_good_api_key_is_never_shown_by_the_settings(monkeypatch):
    from service.settings import Settings

    key = "mlp_Good-Key-From-Env-1234567890"
    monkeypatch.setenv("MLP_API_KEY", key)
    settings = Settings.load()
    assert settings.api_key.get_secret_value() == key
    assert key not in repr(settings) and key not in str(settings.model_dump())
    monkeypatch.setenv("MLP_API_KEY", "")
    assert Settings.load().api_key is None


def test_keys_from_mlpctl_work_with_the_api_of_the_same_configuration(make_app, tmp_path):
    """`mlpctl keys create` in another process, reading the same environment (data
    directory, database) as the API: its key authenticates (same key-hash secret)."""
    import os

    app = make_app()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLP_", "DATABASE_URL"))}
    env["DATABASE_URL"] = app.settings.database_url
    result = subprocess.run(
        [sys.executable, "-m", "mlpctl", "keys", "create", "--tenant", "from-cli",
         "--data-dir", str(app.settings.data_dir)],
        env=env, capture_output=True, text=True, timeout=120, check=True)
    key = result.stdout.strip()
    assert key.startswith("mlp_")
    assert app.client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}
                          ).status_code == 200


# --------------------------------------------------------------------------- failed auth


def _from(app, address: str):
    """A client of the same running app whose requests come from `address`."""
    from fastapi.testclient import TestClient

    return TestClient(app.client.app, client=(address, 40000))


def test_failed_authentications_are_throttled_per_client_address(make_app):
    app = make_app(auth_failures_per_minute=3)
    good = app.auth()
    wrong = {"Authorization": "Bearer mlp_wrong-key-0000000000000000000000000000000000000"}
    attacker, bystander = _from(app, "198.51.100.7"), _from(app, "203.0.113.9")

    codes = [attacker.get("/v1/jobs", headers=h).status_code
             for h in (wrong, {"Authorization": "Basic abc"}, wrong, wrong, wrong)]
    assert codes == [401, 401, 401, 429, 429]
    r = attacker.get("/v1/jobs", headers=good)  # a right guess now is no different
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 61
    assert r.headers["content-type"].startswith("application/json")
    assert "MLP_AUTH_FAILURES_PER_MINUTE" in r.json()["message"]
    assert attacker.get("/healthz").status_code == 200  # probes need no key

    # another address is not slowed: its valid key works, its wrong key is a plain 401
    assert bystander.get("/v1/jobs", headers=good).status_code == 200
    assert bystander.get("/v1/jobs", headers=wrong).status_code == 401

    text = app.client.get("/metrics").text
    assert 'mlp_auth_failures_total{reason="unknown"} 3.0' in text
    assert 'mlp_auth_failures_total{reason="malformed"} 1.0' in text
    assert "mlp_auth_throttled_total 3.0" in text


def test_ipv6_clients_are_counted_by_their_64(make_app):
    app = make_app(auth_failures_per_minute=2)
    wrong = {"Authorization": "Bearer mlp_wrong"}
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2"):
        assert _from(app, host).get("/v1/jobs", headers=wrong).status_code == 401
    assert _from(app, "2001:db8:1:2::3").get("/v1/jobs", headers=wrong).status_code == 429
    assert _from(app, "2001:db8:1:3::1").get("/v1/jobs", headers=app.auth()).status_code == 200


def test_the_throttle_can_be_turned_off(make_app):
    app = make_app(auth_failures_per_minute=0)
    attacker = _from(app, "198.51.100.99")
    assert {attacker.get("/v1/jobs", headers={"Authorization": "Bearer x"}).status_code
            for _ in range(30)} == {401}


def test_the_throttle_is_shared_through_redis_bounded_and_survives_redis_down(redis_url):
    """Two API processes (two throttles on one Redis) share an address's budget; the table
    in a process holds at most `max_addresses`; with Redis down a process still counts."""
    import uuid

    import redis

    from service.errors import TooManyRequests
    from service.ratelimit import AuthFailureThrottle

    now = [1_000_000.0]
    client = redis.Redis.from_url(redis_url)
    one = AuthFailureThrottle(client, per_minute=3, clock=lambda: now[0])
    two = AuthFailureThrottle(client, per_minute=3, clock=lambda: now[0])
    address = f"192.0.2.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        one.check(address)
        one.failure(address)
    with pytest.raises(TooManyRequests):
        one.check(address)
    two.check(address)  # the other process has not seen this address yet ...
    with pytest.raises(TooManyRequests):
        two.failure(address)  # ... and learns at its first failure that the budget is spent
    with pytest.raises(TooManyRequests):
        two.check(address)
    now[0] += 60  # the next minute: a new budget
    one.check(address)
    client.close()

    down = redis.Redis.from_url(CLOSED_REDIS, socket_connect_timeout=0.2)
    alone = AuthFailureThrottle(down, per_minute=2, max_addresses=50, clock=lambda: now[0])
    alone.failure("198.51.100.1")
    alone.failure("198.51.100.1")
    with pytest.raises(TooManyRequests) as info:
        alone.check("198.51.100.1")
    assert 1 <= int(info.value.headers["Retry-After"]) <= 61
    for i in range(200):  # many addresses: the table keeps the 50 most recent
        alone.failure(f"203.0.113.{i}")
    assert len(alone) == 50
