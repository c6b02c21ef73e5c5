"""What a succeeded job serves: metrics, events, weights, model card, predictions. The job
is trained in the test with mlp_engine.fit and stored the way a worker stores it."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import numpy as np
import pytest

from .conftest import BOTH_BACKENDS, SMALL_SPEC, store_succeeded_job

pytestmark = BOTH_BACKENDS


@pytest.fixture(scope="module")
def done(harness, trained):
    headers = harness.auth()
    return headers, store_succeeded_job(harness, headers, trained)


def test_job_object_after_success(client, done, trained):
    headers, job_id = done
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded"
    assert job["progress"] == {"epoch": 3, "epochs": 3}
    assert job["attempts"] == 1 and job["finished_at"]
    weights = job["artifacts"]["weights"]
    assert weights["format"] == "safetensors"
    assert weights["sha256"] == hashlib.sha256(trained["weights"].read_bytes()).hexdigest()
    assert job["metrics"]["final"]["epoch"] == 3


def test_metrics_and_since(client, done, trained):
    headers, job_id = done
    body = client.get(f"/v1/jobs/{job_id}/metrics", headers=headers).json()
    assert [e["epoch"] for e in body["epochs"]] == [1, 2, 3]
    assert body["epochs"][0]["train_loss"] == pytest.approx(trained["history"][0]["train_loss"])
    later = client.get(f"/v1/jobs/{job_id}/metrics", headers=headers, params={"since": 1})
    assert [e["epoch"] for e in later.json()["epochs"]] == [2, 3]


def test_weights_download_etag_and_pt(client, done, trained):
    headers, job_id = done
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == trained["weights"].read_bytes()
    etag = r.headers["etag"]
    assert etag == f'"{hashlib.sha256(r.content).hexdigest()}"'
    again = client.get(f"/v1/jobs/{job_id}/weights", headers={**headers,
                                                               "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    pt = client.get(f"/v1/jobs/{job_id}/weights", headers=headers, params={"format": "pt"})
    assert pt.status_code == 200 and pt.content == trained["pt"].read_bytes()
    assert pt.headers["etag"] != etag
    assert client.get(f"/v1/jobs/{job_id}/weights", headers=headers,
                      params={"format": "npz"}).status_code == 422


def test_model_card(client, done):
    headers, job_id = done
    card = client.get(f"/v1/jobs/{job_id}/model", headers=headers).json()
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert card["parameter_count"] == job["parameter_count"] == 5 * 8 + 9 * 3
    assert [(row["shape"], row["parameters"]) for row in card["layers"]] == [
        ([8, 4], 32), ([8], 8), ([3, 8], 24), ([3], 3)]
    assert card["spec"]["model"]["input_dim"] == 4
    assert card["class_labels"] == [0, 1, 2]
    assert card["preprocessing"]["class_labels"] == [0, 1, 2]
    assert card["metrics"]["final"]["epoch"] == 3
    assert card["weights"]["sha256"] == job["artifacts"]["weights"]["sha256"]
    assert card["formats"] == ["safetensors", "pt", "onnx"]
    assert card["loss_unit"]  # classification: the loss's own units


def test_predict_matches_the_engine(client, done, trained):
    from mlp_engine import load_model
    from mlp_engine.inference import predict

    headers, job_id = done
    x = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    r = client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json={"x": x})
    assert r.status_code == 200, r.text
    expected = predict(load_model(trained["weights"]), x)
    body = r.json()
    assert body["predictions"] == expected["predictions"]
    assert np.allclose(body["probabilities"], expected["probabilities"], atol=1e-6)
    assert all(abs(sum(p) - 1) < 1e-5 for p in body["probabilities"])


@pytest.mark.parametrize("body,field", [
    ({"x": [[1.0, 2.0, 3.0]]}, "x"),
    ({"x": []}, "x"),
    ({"x": [[1, 2, 3, 4], [1, 2]]}, ""),
    ({"x": [["a", 2, 3, 4]]}, "x"),
    ({"rows": [[1, 2, 3, 4]]}, "rows"),
])
def test_predict_rejects_bad_rows(client, done, body, field):
    headers, job_id = done
    r = client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def _read_events(response, limit_s: float = 20.0) -> list[tuple[str, dict]]:
    events, kind, deadline = [], None, time.monotonic() + limit_s
    for line in response.iter_lines():
        assert time.monotonic() < deadline, "the stream did not end"
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: "):])))
            if kind == "end":
                break
    return events


def test_events_of_a_finished_job(client, done):
    headers, job_id = done
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _read_events(r)
    kinds = [k for k, _ in events]
    assert kinds == ["metrics", "metrics", "metrics", "status", "end"]
    assert [d["epoch"] for k, d in events if k == "metrics"] == [1, 2, 3]
    assert events[3][1]["status"] == "succeeded"
    assert events[-1][1]["status"] == "succeeded"


def test_events_live(harness, client, trained):
    """A client that connects while the job is queued gets the status, each epoch once
    (published on Redis and recorded in the database), and the end."""
    from messaging.live_events import publish_event, publish_status
    from store.jobs import claim_job, finish_job, get_job, record_epochs

    headers = harness.auth()
    job_id = client.post("/v1/jobs", headers=headers, json=SMALL_SPEC).json()["id"]
    services = harness.services

    def worker() -> None:
        time.sleep(0.5)
        with services.session_factory() as session:
            claim_job(session, job_id, worker_id="w", lease_s=60)
            publish_status(services.redis, get_job(session, job_id))
            for record in trained["history"]:
                record_epochs(session, job_id, [record])
                publish_event(services.redis, job_id, "metrics", record)
                # a duplicate delivery must not show up twice
                publish_event(services.redis, job_id, "metrics", record)
                time.sleep(0.1)
            finish_job(session, job_id, "succeeded")
            publish_status(services.redis, get_job(session, job_id))

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
            events = _read_events(r)
    finally:
        thread.join()
    assert events[0] == ("status", events[0][1]) and events[0][1]["status"] == "queued"
    assert [d["epoch"] for k, d in events if k == "metrics"] == [1, 2, 3]
    statuses = [d["status"] for k, d in events if k == "status"]
    assert statuses[-1] == "succeeded"
    assert events[-1][0] == "end"


def test_events_resume_after_last_event_id(client, done):
    headers, job_id = done
    with client.stream("GET", f"/v1/jobs/{job_id}/events",
                       headers={**headers, "Last-Event-ID": "2"}) as r:
        events = _read_events(r)
    assert [d["epoch"] for k, d in events if k == "metrics"] == [3]


def test_delete_a_succeeded_job_removes_its_weights(harness, client, trained):
    headers = harness.auth()
    job_id = store_succeeded_job(harness, headers, trained)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 409
    assert client.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 204
    assert not harness.services.artifacts.exists(f"jobs/{job_id}/weights.safetensors")
    assert client.get(f"/v1/jobs/{job_id}/metrics", headers=headers).status_code == 404


def test_a_lost_weights_file_is_404_not_500(harness, client, trained):
    headers = harness.auth()
    job_id = store_succeeded_job(harness, headers, trained)
    harness.services.artifacts.delete_prefix(f"jobs/{job_id}/")
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=headers)
    assert r.status_code == 404
    assert "missing" in r.json()["message"]
