"""What one request may make the API spend, and how it answers at the edges (SPEC 7):
prediction answers bounded by rows × outputs and `top_k`, HEAD wherever GET works, keys
never written to the access log."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from .conftest import BOTH_BACKENDS, store_succeeded_job

pytestmark = BOTH_BACKENDS

X = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def done(harness, trained):
    headers = harness.auth()
    return headers, store_succeeded_job(harness, headers, trained)


def test_top_k_returns_the_k_most_probable_classes(client, done):
    headers, job_id = done
    full = client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json={"x": X}).json()
    r = client.post(f"/v1/jobs/{job_id}/predict?top_k=2", headers=headers, json={"x": X})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == full["predictions"]
    for probs, classes, row, label in zip(body["probabilities"], body["classes"],
                                          full["probabilities"], full["predictions"],
                                          strict=True):
        assert len(probs) == len(classes) == 2
        assert classes[0] == label and probs[0] >= probs[1]
        assert np.allclose(probs, sorted(row, reverse=True)[:2], atol=1e-6)
    assert client.post(f"/v1/jobs/{job_id}/predict?top_k=0", headers=headers,
                       json={"x": X}).status_code == 422


def test_rows_times_outputs_is_bounded(make_app, trained, database_url):
    app = make_app(max_predict_cells=7, database_url=database_url)
    headers = app.auth()
    job_id = store_succeeded_job(app, headers, trained)
    r = app.client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json={"x": X})
    assert r.status_code == 422, r.text  # 3 rows × 3 classes = 9 > 7
    message = r.json()["message"]
    assert "max_predict_cells=7" in message and "MLP_MAX_PREDICT_CELLS" in message
    assert "top_k" in message
    r = app.client.post(f"/v1/jobs/{job_id}/predict?top_k=2", headers=headers,
                        json={"x": X})
    assert r.status_code == 200, r.text  # 3 rows × top 2 = 6
    assert app.client.get("/v1/catalog", headers=headers).json()["limits"][
        "max_predict_cells"] == 7


def test_head_works_wherever_get_does(client, done):
    headers, job_id = done
    for path in ("/healthz", "/readyz", f"/v1/jobs/{job_id}", "/v1/catalog",
                 f"/v1/jobs/{job_id}/metrics", f"/v1/jobs/{job_id}/weights"):
        get = client.get(path, headers=headers)
        head = client.head(path, headers=headers)
        assert head.status_code == get.status_code == 200, (path, head.status_code)
        assert head.content == b""
        assert head.headers.get("content-type") == get.headers.get("content-type")
    weights = client.head(f"/v1/jobs/{job_id}/weights", headers=headers)
    assert weights.headers["etag"] and int(weights.headers["content-length"]) > 0
    # a stream answers its headers and ends
    events = client.head(f"/v1/jobs/{job_id}/events", headers=headers)
    assert events.status_code == 200 and events.content == b""
    assert client.head("/v1/jobs/job_nope", headers=headers).status_code == 404
    assert client.head(f"/v1/jobs/{job_id}").status_code == 401


def test_credentials_in_a_query_string_never_reach_the_access_log(caplog, database_url):
    from service.observability import install_access_log_redaction, redact_query

    assert redact_query("/v1/jobs?api_key=mlp_secret&limit=5") == \
        "/v1/jobs?api_key=[redacted]&limit=5"
    assert redact_query("/x?limit=5&Token=abc") == "/x?limit=5&Token=[redacted]"
    assert redact_query("/x?keyboard=1") == "/x?keyboard=1"
    install_access_log_redaction()
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                    "/v1/jobs?api_key=mlp_topsecret", "1.1", 401)
    assert "mlp_topsecret" not in caplog.text and "[redacted]" in caplog.text


def test_a_key_in_the_query_string_is_not_accepted(client, harness):
    key = harness.new_key()
    assert client.get(f"/v1/jobs?api_key={key}").status_code == 401


@pytest.mark.parametrize("model,limit", [
    ({"hidden_layers": 5000}, "max_hidden_layers=64"),
    ({"hidden_dims": [8] * 1500}, "max_hidden_layers=64"),
    ({"hidden_dims": [8, 2_000_000]}, "max_hidden_width=8192"),
    ({"hidden_layers": 100}, "max_hidden_layers=64"),
])
def test_a_spec_over_a_limit_names_the_configured_limit(client, auth, model, limit):
    spec = {"dataset": {"builtin": "iris"}, "model": model}
    for route in ("/v1/specs/validate", "/v1/jobs"):
        r = client.post(route, headers=auth, json=spec)
        assert r.status_code == 422, r.text
        assert limit in r.json()["message"], r.json()["message"]
        assert "1000" not in r.json()["message"]


def test_a_job_that_would_not_fit_in_memory_is_refused_at_submit(client, auth):
    """The hardening issue's first case: 2 M parameters, but the hinge pairs alone would
    take ~30 GB. Refused at validate and at submit, naming the limit and the estimate."""
    spec = {"dataset": {"builtin": "iris"}, "task": "metric_learning",
            "model": {"hidden_dims": [1], "output_dim": 1_000_000}, "training": {"epochs": 1}}
    for route in ("/v1/specs/validate", "/v1/jobs"):
        r = client.post(route, headers=auth, json=spec)
        assert r.status_code == 422, r.text
        message = r.json()["message"]
        assert "max_job_memory_bytes" in message and "MLP_MAX_JOB_MEMORY_BYTES" in message
        assert "loss buffers" in message or "GiB" in message
    assert client.get("/v1/jobs", headers=auth).json()["items"] == []
    ok = client.post("/v1/specs/validate", headers=auth,
                     json={"dataset": {"builtin": "iris"}}).json()
    assert 0 < ok["memory_estimate"]["bytes"] < 2**30
    limits = client.get("/v1/catalog", headers=auth).json()["limits"]
    assert limits["max_job_memory_bytes"] > 2**30


NAMES = ["sepal length", "sepal width", "petal length", "petal width"]


@pytest.fixture(scope="module")
def named(harness, tmp_path_factory):
    """A job trained on a table with named columns (as an uploaded CSV gives)."""
    import pandas as pd

    from mlp_engine import JobSpec, export_state_dict, fit, save_model

    from .conftest import SMALL_SPEC

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(30, 4)), columns=NAMES)
    y = pd.Series([i % 3 for i in range(30)], name="species")
    spec = {**SMALL_SPEC, "dataset": {"builtin": "iris"}}
    result = fit(JobSpec.model_validate(spec), x, y)
    directory = tmp_path_factory.mktemp("named")
    trained = {"weights": save_model(directory / "w.safetensors", result),
               "pt": export_state_dict(directory / "w.pt", result),
               "history": [dict(r) for r in result.history]}
    headers = harness.auth()
    return headers, store_succeeded_job(harness, headers, trained)


def test_rows_by_feature_name_answer_as_rows_in_order(client, named):
    headers, job_id = named
    card = client.get(f"/v1/jobs/{job_id}/model", headers=headers).json()
    assert card["preprocessing"]["feature_names"] == NAMES
    by_list = client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json={"x": X})
    # the same rows as objects, keys in another order
    rows = [dict(reversed(list(zip(NAMES, row, strict=True)))) for row in X]
    by_name = client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json={"x": rows})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json() == by_list.json()


@pytest.mark.parametrize("change, named_in_message", [
    (lambda row: {k: v for k, v in row.items() if k != "petal width"}, "lacks 'petal width'"),
    (lambda row: {**row, "colour": 1.0}, "has 'colour', not a feature"),
    (lambda row: {**row, "petal width": "wide"}, "x"),
])
def test_a_row_by_name_that_does_not_fit_is_422_naming_it(client, named, change,
                                                         named_in_message):
    headers, job_id = named
    rows = [dict(zip(NAMES, row, strict=True)) for row in X]
    rows[1] = change(rows[1])
    r = client.post(f"/v1/jobs/{job_id}/predict", headers=headers, json={"x": rows})
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert named_in_message in message
    if named_in_message != "x":
        assert "x[1]" in message and "sepal length" in message
