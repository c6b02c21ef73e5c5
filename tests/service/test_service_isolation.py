"""Tenants: another tenant's job or dataset answers 404 on every route, never 403 and
never its data, and lists show only one's own objects."""

from __future__ import annotations

import pytest

from .conftest import BOTH_BACKENDS, csv_bytes, store_succeeded_job, upload

pytestmark = BOTH_BACKENDS


@pytest.fixture(scope="module")
def owned(harness, trained):
    headers = harness.auth()
    job_id = store_succeeded_job(harness, headers, trained)
    dataset = upload(harness.client, headers, csv_bytes(), target="label").json()
    return headers, job_id, dataset["id"]


JOB_ROUTES = [("GET", ""), ("POST", "/cancel"), ("DELETE", ""), ("GET", "/metrics"),
              ("GET", "/events"), ("GET", "/weights"), ("GET", "/model"), ("POST", "/predict"),
              ("GET", "/logs"), ("GET", "/weights?format=onnx")]


@pytest.mark.parametrize("method,suffix", JOB_ROUTES)
def test_another_tenant_gets_404_for_a_job(client, owned, other_auth, method, suffix):
    _, job_id, _ = owned
    body = {"x": [[0.1, 0.2, 0.3, 0.4]]} if suffix == "/predict" else None
    r = client.request(method, f"/v1/jobs/{job_id}{suffix}", headers=other_auth, json=body)
    assert r.status_code == 404, r.text
    assert "succeeded" not in r.text and "spec" not in r.json()


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_another_tenant_gets_404_for_a_dataset(client, owned, other_auth, method):
    _, _, dataset_id = owned
    r = client.request(method, f"/v1/datasets/{dataset_id}", headers=other_auth)
    assert r.status_code == 404


def test_lists_and_jobs_see_only_their_own(client, owned, other_auth):
    headers, job_id, dataset_id = owned
    assert client.get("/v1/jobs", headers=other_auth).json()["items"] == []
    assert client.get("/v1/datasets", headers=other_auth).json()["items"] == []
    r = client.post("/v1/jobs", headers=other_auth, json={"dataset": {"id": dataset_id}})
    assert r.status_code == 422
    assert "dataset.id" in r.json()["message"]
    # the owner still sees everything, untouched
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"] == "succeeded"
    assert client.get(f"/v1/datasets/{dataset_id}", headers=headers).status_code == 200
