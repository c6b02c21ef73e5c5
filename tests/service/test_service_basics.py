"""Health, readiness, metrics, authentication, error bodies and limits on requests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import BOTH_BACKENDS, Harness, _settings

pytestmark = BOTH_BACKENDS


@pytest.fixture(scope="module")
def harness(database_url: str, redis_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """This module's app does not throttle failed authentications: it sends dozens of bad
    keys on purpose (the throttle has its own tests, in test_service_config.py)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    settings = _settings(tmp_path_factory.mktemp("service"), database_url, redis_url,
                         auth_failures_per_minute=0)
    with TestClient(create_app(settings)) as client:
        yield Harness(client=client, settings=settings)

# every /v1 route, with a body where it takes one (ids need not exist: auth comes first)
V1_ROUTES = [
    ("GET", "/v1/catalog"), ("POST", "/v1/specs/validate"), ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"), ("GET", "/v1/jobs/job_x"), ("POST", "/v1/jobs/job_x/cancel"),
    ("DELETE", "/v1/jobs/job_x"), ("GET", "/v1/jobs/job_x/metrics"),
    ("GET", "/v1/jobs/job_x/events"), ("GET", "/v1/jobs/job_x/weights"),
    ("GET", "/v1/jobs/job_x/model"), ("POST", "/v1/jobs/job_x/predict"),
    ("GET", "/v1/jobs/job_x/logs"),
    ("POST", "/v1/datasets"), ("GET", "/v1/datasets"), ("GET", "/v1/datasets/ds_x"),
    ("DELETE", "/v1/datasets/ds_x"),
]


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "down": []}


@pytest.mark.parametrize("method,path", V1_ROUTES)
@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer a b",
                                    "Bearer mlp_not-a-real-key"])
def test_v1_routes_need_a_valid_key(client, method, path, header):
    headers = {"Authorization": header} if header else {}
    r = client.request(method, path, headers=headers,
                       json={"dataset": {"builtin": "iris"}} if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    body = r.json()
    assert body["message"] and body["detail"] == body["message"]
    if header is None:
        assert "missing API key" in body["message"]
    elif header == "Bearer mlp_not-a-real-key":
        assert "unknown" in body["message"]
    else:
        assert "malformed" in body["message"]


def test_metrics_text_has_requests_jobs_and_queues(client, auth):
    client.get("/v1/jobs/job_nope", headers=auth)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'mlp_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}' in text
    assert "mlp_http_request_duration_seconds_bucket" in text
    assert 'mlp_jobs{status="queued"}' in text
    assert 'mlp_queue_depth{queue="cpu"}' in text
    client.get("/v1/jobs", headers={"Authorization": "Bearer mlp_not-a-real-key"})
    text = client.get("/metrics").text
    assert 'mlp_auth_failures_total{reason="unknown"}' in text
    assert 'mlp_auth_failures_total{reason="malformed"}' in text
    assert "mlp_auth_throttled_total 0.0" in text  # this module's app throttles nothing


def test_unknown_route_is_json_404(client):
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.json()["message"]


def test_openapi_schema_builds(client):
    schema = client.get("/openapi.json").json()
    assert "/v1/jobs/{job_id}/predict" in schema["paths"]
    assert schema["components"]["securitySchemes"]


def test_wrong_method_is_405_with_every_allowed_method(client, auth):
    r = client.put("/v1/jobs", headers=auth)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    assert client.patch("/v1/datasets/ds_x", headers=auth).headers["allow"] == "DELETE, GET"
