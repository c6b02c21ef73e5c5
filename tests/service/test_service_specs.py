"""GET /v1/catalog and POST /v1/specs/validate."""

from __future__ import annotations

import pytest

from .conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


def test_catalog_lists_choices_and_limits(client, auth):
    r = client.get("/v1/catalog", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert {"relu", "leaky_relu", "gelu"} <= {a["name"] for a in body["activations"]}
    losses = {entry["name"]: entry for entry in body["losses"]}
    assert losses["mse"]["task"] == "regression"
    assert {"iris", "digits", "moons", "spirals"} <= {d["name"] for d in body["datasets"]}
    limits = body["limits"]
    assert limits["max_hidden_width"] == 8192
    assert limits["max_upload_bytes"] == 64 * 1024
    assert limits["max_active_jobs_per_tenant"] == 100
    assert body["upload_formats"] == ["csv", "npz", "parquet"]


def test_validate_resolves_sizes_and_theory(client, auth):
    spec = {"dataset": {"builtin": "digits"},
            "model": {"hidden_dims": [32, 32], "activation": "relu"}}
    r = client.post("/v1/specs/validate", headers=auth, json=spec)
    assert r.status_code == 200, r.text
    body = r.json()
    resolved = body["resolved_spec"]
    assert resolved["task"] == "classification"
    assert resolved["loss"]["name"] == "cross_entropy"
    assert (resolved["model"]["input_dim"], resolved["model"]["output_dim"]) == (64, 10)
    assert body["parameter_count"] == 65 * 32 + 33 * 32 + 33 * 10
    assert body["parameter_count_formula"] == body["parameter_count"]
    formula = body["parameter_count_formula_detail"]
    assert (formula["n0"], formula["n"], formula["L"], formula["k"]) == (64, 32, 2, 10)
    bound = body["linear_regions_bound"]
    assert int(bound["lower_bound"]) >= 1 and isinstance(bound["log10"], float)


def test_validate_one_hidden_layer_bound_is_exact(client, auth):
    spec = {"dataset": {"builtin": "moons"}, "model": {"hidden_dims": [5]}}
    body = client.post("/v1/specs/validate", headers=auth, json=spec).json()
    # two inputs, five ReLUs: C(5,0) + C(5,1) + C(5,2) regions
    assert body["linear_regions_bound"]["lower_bound"] == "16"


def test_validate_no_formula_for_mixed_widths_or_batch_norm(client, auth):
    for model in ({"hidden_dims": [16, 8]}, {"hidden_dims": [8, 8], "batch_norm": True},
                  {"hidden_dims": [8], "activation": "tanh"}):
        body = client.post("/v1/specs/validate", headers=auth,
                           json={"dataset": {"builtin": "iris"}, "model": model}).json()
        if model.get("activation") == "tanh":
            assert body["linear_regions_bound"] is None
            assert body["parameter_count_formula"] is not None
        else:
            assert body["parameter_count_formula"] is None
    body = client.post("/v1/specs/validate", headers=auth, json={
        "dataset": {"builtin": "iris"}, "model": {"hidden_dims": [8, 8], "batch_norm": True}}
    ).json()
    assert body["parameter_count"] == 5 * 8 + 9 * 8 + 9 * 3 + 2 * 16


def test_validate_inline_data(client, auth):
    spec = {"dataset": {"inline": {"x": [[0, 0], [0, 1], [1, 0], [1, 1]],
                                   "y": ["no", "yes", "yes", "no"]}}}
    body = client.post("/v1/specs/validate", headers=auth, json=spec).json()
    assert body["resolved_spec"]["model"]["output_dim"] == 2


@pytest.mark.parametrize("spec,field,words", [
    ({"dataset": {"builtin": "iris"}, "colour": "red"}, "colour", "unknown field"),
    ({"dataset": {"builtin": "iris"}, "model": {"hidden_dimz": [3]}}, "model.hidden_dimz",
     "unknown field"),
    ({"dataset": {"builtin": "iris"}, "task": "classification", "loss": "mse"}, "",
     "regression"),
    ({"dataset": {"builtin": "diabetes"}, "loss": "cross_entropy"}, "task", "class labels"),
    ({"dataset": {"builtin": "iris"}, "model": {"hidden_dims": [100000]}},
     "model.hidden_dims", "max_hidden_width"),
    ({"dataset": {"builtin": "iris"}, "training": {"epochs": 50000}}, "training.epochs",
     "max_epochs"),
    ({"dataset": {"builtin": "iris"}, "model": {"hidden_dims": [8000] * 3}}, "model",
     "max_parameters"),
    ({"dataset": {"id": "ds_missing"}}, "dataset.id", "no dataset"),
    ({"dataset": {"builtin": "iris"}, "model": {"activation": "swish"}}, "model.activation",
     "unknown activation"),
    ({"dataset": {"builtin": "iris"}, "training": {"epochs": -1}}, "training.epochs", ""),
    ({}, "dataset", "required"),
])
def test_validate_rejects_with_the_field_named(client, auth, spec, field, words):
    r = client.post("/v1/specs/validate", headers=auth, json=spec)
    assert r.status_code == 422, r.text
    body = r.json()
    assert isinstance(body["detail"], list) and body["detail"]
    item = body["detail"][0]
    assert set(item) == {"loc", "msg", "type"}
    if field:
        assert ".".join(str(p) for p in item["loc"][1:]).startswith(field)
        assert field in body["message"]
    assert words in body["message"]


def test_validate_rejects_broken_json(client, auth):
    r = client.post("/v1/specs/validate", content=b'{"dataset": ',
                    headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["message"]
    r = client.post("/v1/specs/validate", json=[1, 2], headers=auth)
    assert r.status_code == 422
