"""Findings through the API (SPEC section 8): the catalog's rules, the static findings of
POST /v1/specs/validate and of a submitted job, GET /v1/jobs/{id}/findings, and the 422s of
bad per-job rule settings."""

from __future__ import annotations

import pytest

from .conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

TANH_HE = {"dataset": {"builtin": "digits"},
           "model": {"activation": "tanh", "init": "kaiming_normal", "hidden_dims": [32]},
           "training": {"epochs": 2}}


def test_the_catalog_lists_every_rule_with_thresholds(client, auth):
    rules = {r["name"]: r for r in client.get("/v1/catalog", headers=auth).json()["rules"]}
    assert {"vanishing_gradients", "exploding_gradients", "dead_units",
            "saturated_activations", "poor_initialization", "loss_not_decreasing",
            "overfitting", "diverging", "class_imbalance", "init_activation_mismatch",
            "overparameterized"} <= set(rules)
    dead = rules["dead_units"]
    assert dead["severity"] == "warning" and dead["phase"] == "diagnostics"
    assert dead["parameters"][0]["name"] == "threshold" and dead["parameters"][0]["default"] == 0.5
    assert rules["overparameterized"]["severity"] == "info"
    assert "vanishing" in rules["vanishing_gradients"]["explanation"]


def test_validate_answers_the_static_findings(client, auth):
    body = client.post("/v1/specs/validate", headers=auth, json=TANH_HE).json()
    (finding,) = [f for f in body["findings"] if f["rule"] == "init_activation_mismatch"]
    assert finding["severity"] == "warning" and finding["epoch"] is None
    assert finding["suggestion"] == {"model.init": "xavier_normal"}
    assert finding["evidence"] == {"activation": "tanh", "init": "kaiming_normal"}
    assert finding["message"] and finding["explanation"]
    healthy = client.post("/v1/specs/validate", headers=auth,
                          json={"dataset": {"builtin": "digits"}}).json()
    assert [f for f in healthy["findings"] if f["severity"] != "info"] == []


def test_a_submitted_job_carries_its_static_findings(client, auth, other_auth):
    created = client.post("/v1/jobs", headers=auth, json=TANH_HE)
    assert created.status_code == 201, created.text
    job = created.json()
    assert [f["rule"] for f in job["findings"]] == ["init_activation_mismatch"]
    again = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert again["findings"] == job["findings"]
    listed = client.get(f"/v1/jobs/{job['id']}/findings", headers=auth)
    assert listed.status_code == 200
    assert listed.json() == {"job_id": job["id"], "findings": job["findings"]}
    assert client.get(f"/v1/jobs/{job['id']}/findings", headers=other_auth).status_code == 404


def test_turned_off_rules_find_nothing(client, auth):
    spec = {**TANH_HE, "diagnostics": {"rules": {"init_activation_mismatch": False}}}
    body = client.post("/v1/specs/validate", headers=auth, json=spec).json()
    assert "init_activation_mismatch" not in {f["rule"] for f in body["findings"]}


@pytest.mark.parametrize("diagnostics, words", [
    ({"rules": {"no_such_rule": False}}, "unknown rule 'no_such_rule'"),
    ({"rules": {"dead_units": {"threshold": 2}}}, "dead_units.threshold must be <= 1.0"),
    ({"stop_on": ["nonsense"]}, "unknown rule 'nonsense'"),
    ({"stop_on": "dead_units"}, "list"),
])
def test_bad_rule_settings_are_422_naming_the_field(client, auth, diagnostics, words):
    r = client.post("/v1/specs/validate", headers=auth,
                    json={"dataset": {"builtin": "iris"}, "diagnostics": diagnostics})
    assert r.status_code == 422, r.text
    assert words in r.text and "diagnostics" in r.text
