"""`GET /v1/jobs/{id}/weights?format=onnx` (SPEC 12): an ONNX model that takes raw features
and answers what `POST /v1/jobs/{id}/predict` answers, under onnxruntime, on every task;
exported on the first request, then kept beside the safetensors file with its own ETag."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from .conftest import Harness

TOLERANCE = 1e-5
_BN_DROPOUT = {"batch_norm": True, "dropout": 0.3}


def _rows(n: int, d: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * 3 + 5).round(3).tolist()


def _specs() -> dict[str, dict[str, Any]]:
    x = _rows(40, 4, 0)
    labels = ["ham", "eggs", "spam"]
    return {
        "classification": {"dataset": {"inline": {"x": x, "y": [
            labels[int(r[0] > 5) + int(r[1] > 6)] for r in x]}},
            "model": {"hidden_dims": [8, 6], **_BN_DROPOUT}},
        "regression": {"task": "regression", "dataset": {"inline": {"x": x, "y": [
            [r[0] * 40 + 250, r[1] - r[2]] for r in x]}},
            "model": {"hidden_dims": [8], **_BN_DROPOUT}},
        "multilabel": {"task": "multilabel", "dataset": {"inline": {"x": x, "y": [
            [float(r[0] > 5), float(r[3] > 5), float(r[1] > r[2])] for r in x]}},
            "model": {"hidden_dims": [8], **_BN_DROPOUT}},
        "metric_learning": {"task": "metric_learning", "loss": "hinge_embedding",
                            "dataset": {"inline": {"x": x, "y": [int(r[0] > 5) for r in x]}},
                            "model": {"hidden_dims": [8], **_BN_DROPOUT}},
    }


def _store(harness: Harness, headers: dict[str, str], spec: dict[str, Any], weights: Any,
           *, finish: bool = True) -> str:
    """Create the job through the API; then, as a worker does, store its weights and finish
    it as succeeded (no torch state_dict export: that one is optional)."""
    from store.jobs import claim_job, finish_job

    r = harness.client.post("/v1/jobs", headers=headers, json=spec)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    if not finish:
        return job_id
    n, sha = harness.services.artifacts.put_file(f"jobs/{job_id}/weights.safetensors", weights)
    with harness.services.session_factory() as session:
        assert claim_job(session, job_id, worker_id="test-worker", lease_s=60) is not None
        assert finish_job(session, job_id, "succeeded", weights={
            "uri": f"jobs/{job_id}/weights.safetensors", "bytes": n, "sha256": sha})
    return job_id


@pytest.fixture(scope="module")
def jobs(harness: Harness, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[dict[str, str], dict[str, str]]:
    """One succeeded job per task, trained here on the spec it was created with."""
    import torch

    from mlp_engine import JobSpec, fit, save_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("onnx-jobs")
    headers = harness.auth()
    ids = {}
    try:
        for task, body in _specs().items():
            spec = {**body, "name": f"onnx-{task}", "device": "cpu",
                    "training": {"epochs": 3, "batch_size": 8}}
            weights = save_model(directory / f"{task}.safetensors",
                                 fit(JobSpec.model_validate(spec)))
            ids[task] = _store(harness, headers, spec, weights)
    finally:
        torch.set_num_threads(before)
    return headers, ids


def _session(content: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(content, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel",
                                  "metric_learning"])
def test_onnx_outputs_equal_the_predict_route(harness, jobs, task):
    client = harness.client
    headers, ids = jobs
    job_id = ids[task]
    r = client.get(f"/v1/jobs/{job_id}/weights", headers=headers, params={"format": "onnx"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert f"{job_id}.onnx" in r.headers["content-disposition"]
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    x = _rows(23, 4, seed=7)
    answer = client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json={"x": x})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    key = "probabilities" if task in ("classification", "multilabel") else "predictions"
    want = np.asarray(body[key], dtype=np.float32)
    session = _session(r.content)
    (got,) = session.run(None, {"x": np.asarray(x, dtype=np.float32)})
    assert got.shape == want.shape
    # regression answers in the target's units (hundreds here): float32 steps are ~3e-5
    scale = np.maximum(1.0, np.abs(want)) if task == "regression" else 1.0
    assert np.max(np.abs(got - want) / scale) <= TOLERANCE
    (one,) = session.run(None, {"x": np.asarray(x[:1], dtype=np.float32)})  # any batch size
    assert np.max(np.abs(one - want[:1]) / (scale if np.isscalar(scale) else scale[:1])
                  ) <= TOLERANCE


def test_class_order_and_metadata_follow_the_model_card(harness, jobs):
    client = harness.client
    headers, ids = jobs
    job_id = ids["classification"]
    card = client.get(f"/v1/jobs/{job_id}/model", headers=headers).json()
    assert card["class_labels"] == ["eggs", "ham", "spam"]
    content = client.get(f"/v1/jobs/{job_id}/weights", headers=headers,
                         params={"format": "onnx"}).content
    model = onnx.load_from_string(content)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_labels"]) == card["class_labels"]
    assert json.loads(meta["preprocessing"]) == card["preprocessing"]
    assert meta["task"] == "classification"
    x = _rows(9, 4, seed=8)
    (probs,) = _session(content).run(None, {"x": np.asarray(x, dtype=np.float32)})
    predictions = client.post(f"/v1/jobs/{job_id}/predict", headers=headers,
                              json={"x": x}).json()["predictions"]
    assert [card["class_labels"][i] for i in probs.argmax(axis=1)] == predictions


def test_exported_once_then_served_from_the_store_with_304(harness, jobs, monkeypatch):
    client = harness.client
    headers, ids = jobs
    job_id = ids["multilabel"]
    url = f"/v1/jobs/{job_id}/weights"
    first = client.get(url, headers=headers, params={"format": "onnx"})
    assert first.status_code == 200
    artifacts = harness.services.artifacts
    stored = artifacts.get_bytes(f"jobs/{job_id}/weights.onnx")
    assert stored == first.content
    sha = artifacts.get_bytes(f"jobs/{job_id}/weights.onnx.sha256").decode().strip()
    assert first.headers["etag"] == f'"{sha}"'

    import mlp_engine.onnx_export

    def no_export(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("exported again")

    monkeypatch.setattr(mlp_engine.onnx_export, "export_onnx", no_export)
    again = client.get(url, headers=headers, params={"format": "onnx"})
    assert again.status_code == 200 and again.content == first.content
    cached = client.get(url, headers={**headers, "If-None-Match": first.headers["etag"]},
                        params={"format": "onnx"})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == first.headers["etag"]
    safetensors = client.get(url, headers=headers)
    assert safetensors.headers["etag"] != first.headers["etag"]
    assert client.get(url, headers={**headers, "If-None-Match": safetensors.headers["etag"]},
                      params={"format": "onnx"}).status_code == 200


def test_model_card_lists_the_formats(harness, jobs):
    headers, ids = jobs
    card = harness.client.get(f"/v1/jobs/{ids['regression']}/model", headers=headers).json()
    assert card["formats"] == ["safetensors", "onnx"]  # this job has no torch state_dict


def test_409_until_succeeded_and_404_for_another_tenant(harness, jobs):
    client = harness.client
    headers, ids = jobs
    queued = _store(harness, headers, {**_specs()["classification"], "device": "cpu"}, None,
                    finish=False)
    r = client.get(f"/v1/jobs/{queued}/weights", headers=headers, params={"format": "onnx"})
    assert r.status_code == 409 and "succeeded" in r.json()["message"]
    assert not harness.services.artifacts.exists(f"jobs/{queued}/weights.onnx")
    other = harness.auth()
    assert client.get(f"/v1/jobs/{ids['classification']}/weights", headers=other,
                      params={"format": "onnx"}).status_code == 404


def test_without_the_exporter_packages_onnx_is_not_offered(harness, jobs, monkeypatch):
    import service.routes.jobs

    monkeypatch.setattr(service.routes.jobs, "onnx_available", lambda: False)
    headers, ids = jobs
    job_id = ids["metric_learning"]
    r = harness.client.get(f"/v1/jobs/{job_id}/weights", headers=headers,
                           params={"format": "onnx"})
    assert r.status_code == 404 and "onnxscript" in r.json()["message"]
    card = harness.client.get(f"/v1/jobs/{job_id}/model", headers=headers).json()
    assert card["formats"] == ["safetensors"]


def test_deleting_the_job_removes_its_export(harness, jobs, tmp_path):
    from mlp_engine import JobSpec, fit, save_model

    client = harness.client
    headers, _ = jobs
    spec = {**_specs()["classification"], "device": "cpu", "training": {"epochs": 1}}
    weights = save_model(tmp_path / "w.safetensors", fit(JobSpec.model_validate(spec)))
    job_id = _store(harness, headers, spec, weights)
    assert client.get(f"/v1/jobs/{job_id}/weights", headers=headers,
                      params={"format": "onnx"}).status_code == 200
    assert client.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 204
    artifacts = harness.services.artifacts
    assert not artifacts.exists(f"jobs/{job_id}/weights.onnx")
    assert not artifacts.exists(f"jobs/{job_id}/weights.onnx.sha256")


def test_an_export_under_way_answers_503_rather_than_holding_a_request_thread(harness, jobs):
    """Exports are slow (seconds): one at a time per process, and a request for another
    that would have to wait gets 503 with Retry-After at once (SPEC 7)."""
    from service import exports

    headers, ids = jobs
    job_id = ids["classification"]
    artifacts = harness.services.artifacts
    for key in (f"jobs/{job_id}/weights.onnx.sha256", f"jobs/{job_id}/weights.onnx"):
        if artifacts.exists(key):
            artifacts.delete(key)
    url = f"/v1/jobs/{job_id}/weights"
    with exports._EXPORTS.hold():  # another export under way in this process
        busy = harness.client.get(url, headers=headers, params={"format": "onnx"})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5", busy.text
    assert harness.client.get(url, headers=headers,
                              params={"format": "onnx"}).status_code == 200
