"""End to end through real processes: a client submits, follows, downloads and predicts;
uploads a CSV and trains on it; cancels; and sees nothing of another tenant's."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris

from mlpctl.sdk import APIError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DIGITS_SPEC = {
    "name": "e2e-digits",
    "dataset": {"builtin": "digits"},
    "model": {"hidden_dims": [128, 128], "activation": "relu"},
    "optimizer": {"name": "adam", "lr": 0.001},
    "training": {"epochs": 30, "batch_size": 64, "seed": 0},
}


def iris_csv() -> bytes:
    """Iris with the species as string labels, as a person's CSV would have them."""
    iris = load_iris(as_frame=True)
    frame = iris.frame.drop(columns="target")
    frame["species"] = [iris.target_names[t] for t in iris.target]
    return frame.to_csv(index=False).encode()


def wait_for(predicate, *, timeout: float, what: str, poll_s: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_digits_job_streams_to_success_and_its_weights_predict_like_the_service(
        stack, tenant, tmp_path) -> None:
    client = tenant.client
    job = client.submit(DIGITS_SPEC)
    # (an idle worker may have claimed it before the answer left the API)
    assert job["status"] in {"queued", "running"} and job["progress"]["epochs"] == 30

    events = list(client.events(job["id"], timeout=180))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["status"] == "succeeded", (events[-3:],
                                                                            stack.logs())
    epochs = [data["epoch"] for kind, data in events if kind == "metrics"]
    assert epochs == list(range(1, 31)), "each epoch streamed once, in order"
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses

    job = client.get(job["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["progress"] == {"epoch": 30, "epochs": 30}
    assert job["metrics"]["final"]["val_accuracy"] >= 0.95, job["metrics"]
    records = client.metrics(job["id"])["epochs"]
    assert [r["epoch"] for r in records] == list(range(1, 31))
    assert records[-1]["val_accuracy"] >= 0.95
    assert client.metrics(job["id"], since=28)["epochs"][0]["epoch"] == 29

    # the weights file: its ETag is its sha256, and it alone rebuilds the model
    response = httpx.get(f"{stack.base_url}/v1/jobs/{job['id']}/weights",
                         headers={"Authorization": f"Bearer {tenant.key}"})
    assert response.status_code == 200
    assert response.headers["ETag"].strip('"') == hashlib.sha256(response.content).hexdigest()
    assert response.headers["ETag"].strip('"') == job["artifacts"]["weights"]["sha256"]
    path = tmp_path / "digits.safetensors"
    client.weights(job["id"], path)  # the SDK checks the ETag too
    assert path.read_bytes() == response.content

    from mlp_engine import load_model
    from mlp_engine.inference import predict

    model = load_model(path)
    x = load_digits().data[:25].tolist()
    local = predict(model, x)
    remote = client.predict(job["id"], x)
    assert remote["predictions"] == local["predictions"]
    np.testing.assert_allclose(remote["probabilities"], local["probabilities"], atol=1e-5)
    assert np.mean(np.array(local["predictions"]) == load_digits().target[:25]) >= 0.9

    card = client.model_card(job["id"])
    assert card["parameter_count"] == job["parameter_count"] == 64 * 128 + 128 + 128 * 128 \
        + 128 + 128 * 10 + 10

    import torch

    pt = tmp_path / "digits.pt"
    client.weights(job["id"], pt, format="pt")
    state = torch.load(pt, weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()}

    # the ONNX export answers what predict answers, from raw features (SPEC 12)
    import onnxruntime

    onnx_path = tmp_path / "digits.onnx"
    client.weights(job["id"], onnx_path, format="onnx")  # checked against its ETag
    session = onnxruntime.InferenceSession(str(onnx_path))
    (probs,) = session.run(None, {"x": np.asarray(x, dtype=np.float32)})
    assert np.abs(probs - np.asarray(remote["probabilities"])).max() < 1e-5


def test_uploaded_csv_trains_and_predicts_its_own_labels(tenant) -> None:
    client = tenant.client
    upload = httpx.post(
        f"{client._http.base_url}/v1/datasets",
        headers={"Authorization": f"Bearer {tenant.key}"},
        data={"name": "iris-strings", "target": "species"},
        files={"file": ("iris.csv", io.BytesIO(iris_csv()), "text/csv")})
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    assert (dataset["n_rows"], dataset["n_features"], dataset["n_classes"]) == (150, 4, 3)
    assert dataset["sha256"] == hashlib.sha256(iris_csv()).hexdigest()
    assert upload.headers["Location"] == f"/v1/datasets/{dataset['id']}"
    assert client.get_dataset(dataset["id"])["id"] == dataset["id"]

    job = client.submit({"name": "e2e-iris-csv", "dataset": {"id": dataset["id"]},
                         "model": {"hidden_dims": [16]}, "optimizer": {"lr": 0.05},
                         "training": {"epochs": 40, "batch_size": 16}})
    assert job["spec"]["model"]["input_dim"] == 4 and job["spec"]["model"]["output_dim"] == 3
    job = client.wait(job["id"], timeout=120, poll_s=0.3)
    assert job["status"] == "succeeded", job
    answer = client.predict(job["id"], [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert set(answer["predictions"]) <= {"setosa", "versicolor", "virginica"}
    assert answer["predictions"][0] == "setosa"
    assert len(answer["probabilities"][0]) == 3

    # a dataset in use by a finished job may go; its id then no longer trains
    client.delete_dataset(dataset["id"])
    with pytest.raises(APIError) as err:
        client.get_dataset(dataset["id"])
    assert err.value.status == 404


def test_cancel_stops_a_running_job_and_keeps_its_metrics(tenant) -> None:
    client = tenant.client
    job = client.submit({**DIGITS_SPEC, "name": "e2e-cancel",
                         "training": {"epochs": 5000, "batch_size": 64}})
    wait_for(lambda: client.get(job["id"])["progress"]["epoch"] >= 2, timeout=90,
             what="two epochs of the job to cancel")
    answer = client.cancel(job["id"])
    assert answer["status"] in {"cancelling", "cancelled"}

    job = client.wait(job["id"], timeout=60, poll_s=0.2)
    assert job["status"] == "cancelled", job
    assert 2 <= job["progress"]["epoch"] < 5000
    records = client.metrics(job["id"])["epochs"]
    assert len(records) >= 2 and [r["epoch"] for r in records] == list(
        range(1, len(records) + 1))
    with pytest.raises(APIError) as err:  # cancelled: no weights, and no second cancel
        client.weights(job["id"], "/dev/null")
    assert err.value.status == 409
    with pytest.raises(APIError) as err:
        client.cancel(job["id"])
    assert err.value.status == 409
    client.delete_job(job["id"])  # finished: it may go
    with pytest.raises(APIError) as err:
        client.get(job["id"])
    assert err.value.status == 404


def test_a_tenant_sees_nothing_of_another_tenants(tenant, other_tenant) -> None:
    a, b = tenant.client, other_tenant.client
    job = a.submit({"name": "e2e-private", "dataset": {"builtin": "iris"},
                    "training": {"epochs": 2}})
    dataset = a.upload_dataset(_write(iris_csv()), target="species", name="private")

    assert [j["id"] for j in a.list_jobs()] == [job["id"]]
    assert list(b.list_jobs()) == [] and list(b.list_datasets()) == []
    for call in (lambda: b.get(job["id"]), lambda: b.cancel(job["id"]),
                 lambda: b.metrics(job["id"]), lambda: b.predict(job["id"], [[1, 2, 3, 4]]),
                 lambda: b.weights(job["id"], "/dev/null"), lambda: b.delete_job(job["id"]),
                 lambda: b.get_dataset(dataset["id"]),
                 lambda: b.delete_dataset(dataset["id"]),
                 lambda: b.submit({"dataset": {"id": dataset["id"]}})):
        with pytest.raises(APIError) as err:
            call()
        # never 403 and never the object: for b it does not exist (a spec naming the
        # dataset may also be 422, "no such dataset")
        assert err.value.status in {404, 422}, err.value
        text = json.dumps(err.value.body)
        assert "e2e-private" not in text and '"private"' not in text
    a.wait(job["id"], timeout=60, poll_s=0.3)


def _write(data: bytes) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("wb", suffix=".csv", delete=False) as f:
        f.write(data)
    return f.name


def test_bad_requests_get_a_4xx_that_says_why(stack, tenant) -> None:
    base, auth = stack.base_url, {"Authorization": f"Bearer {tenant.key}"}

    def post(path: str, **kwargs):  # type: ignore[no-untyped-def]
        return httpx.post(f"{base}{path}", timeout=30, **kwargs)

    # no key, a malformed key, an unknown key
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer mlp_nope"}):
        r = httpx.get(f"{base}/v1/jobs", headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")

    # specs: each answer names what is wrong
    cases = [
        ({"dataset": {"builtin": "iris"}, "modle": {}}, {422}, "modle"),
        ({"dataset": {"builtin": "iris"}, "model": {"hidden_dims": [100_000]}}, {422}, "width"),
        ({"dataset": {"builtin": "iris"}, "training": {"epochs": 10**9}}, {422}, "epochs"),
        ({"dataset": {"builtin": "no-such-set"}}, {422}, "no-such-set"),
        ({"model": {"hidden_dims": [8]}}, {422}, "dataset"),
        ({"dataset": {"builtin": "iris"}, "model": {"activation": "swishy"}}, {422}, "swishy"),
        ({"dataset": {"id": "ds_does_not_exist"}}, {404, 422}, "ds_does_not_exist"),
    ]
    for spec, statuses, word in cases:
        r = post("/v1/jobs", headers=auth, json=spec)
        assert r.status_code in statuses, (spec, r.status_code, r.text)
        assert word in r.text, (spec, r.text)
        assert r.json()["message"], r.text
    r = post("/v1/jobs", headers={**auth, "Content-Type": "application/json"},
             content=b'{"dataset": ')
    assert r.status_code in {400, 422} and "message" in r.json()

    # uploads: an unknown format, a missing target column, a file that is no table
    uploads = [
        ({"target": "y"}, ("data.txt", b"a,b\n1,2\n"), 415),
        ({"target": "nope"}, ("data.csv", iris_csv()), 422),
        ({"target": "y"}, ("data.csv", b"\x00\x01\x02 not a table"), 422),
        ({"target": "y"}, ("data.npz", b"PK not really a zip"), 422),
        ({"format": "xlsx"}, ("data.csv", iris_csv()), 415),
    ]
    for form, (name, content), status in uploads:
        r = post("/v1/datasets", headers=auth, data=form,
                 files={"file": (name, io.BytesIO(content), "application/octet-stream")})
        assert r.status_code == status, (form, name, r.status_code, r.text)
        assert r.json()["message"], r.text
    r = post("/v1/datasets", headers=auth, data={"target": "y"})  # no file at all
    assert 400 <= r.status_code < 500

    r = httpx.get(f"{base}/v1/jobs/job_missing", headers=auth)
    assert r.status_code == 404
    assert httpx.get(f"{base}/healthz").status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")
def test_the_readme_walk_through_works(stack, tenant, tmp_path) -> None:
    """The README's curl session, run as written (bar the key it asks you to paste)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## A walk through with curl"):]
    script = re.search(r"```bash\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    script = re.sub(r"^export MLP_URL=.*$", "", script, count=1, flags=re.M)
    # the virtual environment is this one (PATH below), not one in the test's directory
    script = re.sub(r"^\. \.venv/bin/activate$", "", script, count=1, flags=re.M)
    env = {**os.environ, "MLP_URL": stack.base_url, "MLP_API_KEY": tenant.key,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "event: end" in out and '"status": "succeeded"' in out.replace('":"', '": "')
    etag = re.search(r'etag: "?([0-9a-f]{64})', out, re.I)
    assert etag and f"{etag.group(1)}  iris.safetensors" in out  # sha256sum agrees
    remote = json.loads(re.search(r'^\{"predictions".*$', out, re.M).group(0))  # type: ignore[union-attr]
    assert str(remote["predictions"]) in out.splitlines()[-1]  # = load_model + predict


def test_a_rule_of_stop_on_streams_its_finding_and_fails_the_job_with_weights(
        stack, tenant, mlpctl, newcomer_env) -> None:
    """SPEC 8 through real processes: the finding as an SSE event, the job failed with
    error.type "rule" and its last weights downloadable, `mlpctl jobs show` saying what to
    change."""
    client = tenant.client
    spec = {"name": "e2e-dead-relus", "dataset": {"builtin": "digits"},
            "model": {"hidden_dims": [128, 128, 128]}, "optimizer": {"name": "adam", "lr": 0.1},
            "training": {"epochs": 20, "seed": 0}, "diagnostics": {"stop_on": ["dead_units"]}}
    job = client.submit(spec)
    events = list(client.events(job["id"], timeout=120))
    findings = [data for kind, data in events
                if kind == "finding" and data["severity"] != "info"]
    assert findings and findings[0]["rule"] == "dead_units", events
    assert events[-1] == ("end", {"id": job["id"], "status": "failed"})
    job = client.get(job["id"])
    assert job["error"] == {"type": "rule", "message": findings[0]["message"]}
    assert job["progress"]["epoch"] == findings[0]["epoch"] == 1
    assert client.findings(job["id"]) == job["findings"]
    weights = httpx.get(f"{stack.base_url}/v1/jobs/{job['id']}/weights",
                        headers={"Authorization": f"Bearer {tenant.key}"})
    assert weights.status_code == 200
    assert weights.headers["ETag"].strip('"') == job["artifacts"]["weights"]["sha256"]

    shown = subprocess.run([*mlpctl, "jobs", "show", job["id"]], capture_output=True,
                           text=True, timeout=60,
                           env={**newcomer_env, "MLP_URL": stack.base_url,
                                "MLP_API_KEY": tenant.key})
    assert shown.returncode == 0, shown.stderr
    assert "[warning] dead_units (epoch 1, hidden." in shown.stdout
    assert "try: model.activation=\"leaky_relu\"" in shown.stdout
    assert f"error     rule: {findings[0]['message']}" in shown.stdout
