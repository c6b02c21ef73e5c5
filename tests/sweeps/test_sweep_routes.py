"""The sweep routes in-process (real Redis and database; no worker: trials are finished
through the store as a worker would): create with 422s naming the path, idempotency,
tenant isolation, the leaderboard, GET /v1/jobs?sweep_id=, PATCH, cancel, delete."""

from __future__ import annotations

import pytest

from store.jobs import claim_job, finish_job, record_epochs
from store.models import JobStatus
from store.sweeps import advance_sweep
from tests.service.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

_X = [[(i * 7 % 10) / 10, (i * 3 % 10) / 10, (i % 4) / 4] for i in range(30)]
_Y = [(i * 7 % 10) // 4 for i in range(30)]
SWEEP = {"name": "grid", "base": {"dataset": {"inline": {"x": _X, "y": _Y}},
                                  "training": {"epochs": 2, "batch_size": 8}},
         "space": {"model.activation": {"choice": ["relu", "tanh"]},
                   "model.hidden_dims": {"choice": [[4], [8]]}},
         "strategy": "grid", "max_concurrent": 2,
         "objective": {"metric": "val_accuracy", "mode": "max"}}


def _finish_queued(harness, sweep_id: str, status: str = JobStatus.SUCCEEDED) -> None:  # type: ignore[no-untyped-def]
    from store.sweeps import trials_of

    with harness.services.session_factory() as s:
        for job in trials_of(s, sweep_id):
            if job.status != JobStatus.QUEUED:
                continue
            assert claim_job(s, job.id, worker_id="w", lease_s=30)
            record_epochs(s, job.id, [{"epoch": 1, "val_accuracy": 0.1 * (job.trial + 1)}],
                          worker_id="w")
            assert finish_job(s, job.id, status, worker_id="w")
        advance_sweep(s, sweep_id)


def test_grid_sweep_lifecycle(harness, client, auth, other_auth) -> None:
    r = client.post("/v1/sweeps", json=SWEEP, headers={**auth, "Idempotency-Key": "k1"})
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert r.headers["Location"] == f"/v1/sweeps/{sweep['id']}"
    assert sweep["status"] == "running" and sweep["trials_total"] == 4
    assert sweep["counts"]["queued"] == 2 and sweep["counts"]["total"] == 2
    again = client.post("/v1/sweeps", json=SWEEP, headers={**auth, "Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.json()["id"] == sweep["id"]
    other = client.post("/v1/sweeps", json={**SWEEP, "seed": 3},
                        headers={**auth, "Idempotency-Key": "k1"})
    assert other.status_code == 409

    sid = sweep["id"]
    for path in (f"/v1/sweeps/{sid}", f"/v1/sweeps/{sid}/trials"):
        assert client.get(path, headers=other_auth).status_code == 404
    assert client.post(f"/v1/sweeps/{sid}/cancel", headers=other_auth).status_code == 404
    assert client.patch(f"/v1/sweeps/{sid}", json={"max_trials": 9},
                        headers=other_auth).status_code == 404
    assert client.delete(f"/v1/sweeps/{sid}", headers=other_auth).status_code == 404
    assert client.get(f"/v1/sweeps/{sid}/events", headers=other_auth).status_code == 404
    assert client.get("/v1/sweeps", headers=other_auth).json()["items"] == []
    assert client.delete(f"/v1/sweeps/{sid}", headers=auth).status_code == 409

    _finish_queued(harness, sid)
    _finish_queued(harness, sid, JobStatus.PRUNED)
    done = client.get(f"/v1/sweeps/{sid}", headers=auth).json()
    assert done["status"] == "succeeded", done
    assert done["counts"]["succeeded"] == 2 and done["counts"]["pruned"] == 2
    board = client.get(f"/v1/sweeps/{sid}/trials", headers=auth).json()
    assert [t["trial"] for t in board["trials"]] == [3, 2, 1, 0]
    assert board["trials"][0]["values"] == {"model.activation": "tanh",
                                            "model.hidden_dims": [8]}
    assert done["best"]["job_id"] == board["trials"][0]["job_id"]
    combos = {(t["values"]["model.activation"], tuple(t["values"]["model.hidden_dims"]))
              for t in board["trials"]}
    assert len(combos) == 4
    jobs = client.get("/v1/jobs", params={"sweep_id": sid}, headers=auth).json()["items"]
    assert sorted(j["trial"] for j in jobs) == [0, 1, 2, 3]
    assert all(j["sweep_id"] == sid for j in jobs)
    assert client.get("/v1/jobs", params={"sweep_id": sid},
                      headers=other_auth).json()["items"] == []

    events = client.get(f"/v1/sweeps/{sid}/events", headers=auth).text
    assert events.count("event: trial_started") == 4
    assert events.count("event: trial_pruned") == 2
    assert "event: best" in events and events.rstrip().splitlines()[-2] == "event: end"

    # a grid has no more trials to give; a finished sweep cannot be cancelled
    r = client.patch(f"/v1/sweeps/{sid}", json={"max_trials": 10}, headers=auth)
    assert r.status_code == 422 and "max_trials" in r.json()["message"]
    assert client.post(f"/v1/sweeps/{sid}/cancel", headers=auth).status_code == 409
    assert client.delete(f"/v1/sweeps/{sid}", headers=auth).status_code == 204
    assert client.get(f"/v1/sweeps/{sid}", headers=auth).status_code == 404
    assert client.get("/v1/jobs", params={"sweep_id": sid}, headers=auth).json()["items"] == []


def test_random_sweep_patch_and_cancel(harness, client, auth) -> None:
    body = {**SWEEP, "strategy": "random", "max_trials": 2, "max_concurrent": 1,
            "space": {"optimizer.lr": {"log_uniform": [0.001, 0.1]}},
            "early_stopping": {"name": "median", "grace_epochs": 1}}
    sweep = client.post("/v1/sweeps", json=body, headers=auth).json()
    sid = sweep["id"]
    _finish_queued(harness, sid)
    _finish_queued(harness, sid)
    assert client.get(f"/v1/sweeps/{sid}", headers=auth).json()["status"] == "succeeded"
    r = client.patch(f"/v1/sweeps/{sid}", json={"max_trials": 2}, headers=auth)
    assert r.status_code == 422 and "raise" in r.json()["message"]
    r = client.patch(f"/v1/sweeps/{sid}", json={"max_trials": 4}, headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert r.json()["counts"]["total"] == 3
    r = client.post(f"/v1/sweeps/{sid}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["counts"]["cancelled"] == 1
    assert client.patch(f"/v1/sweeps/{sid}", json={"max_trials": 9},
                        headers=auth).status_code == 409
    assert client.delete(f"/v1/sweeps/{sid}", headers=auth).status_code == 204


@pytest.mark.parametrize(("change", "named"), [
    ({"space": {"model.widht": {"choice": [1]}}}, "space.model.widht"),
    ({"space": {"model.dropout": {"choice": [0.1, 1.5]}}}, "space.model.dropout"),
    ({"space": {"training.batch_size": {"int_uniform": [1, 10**9]}}, "strategy": "random"},
     "space.training.batch_size"),
    ({"space": {"model.activation": {"choice": ["relu", "bogus"]}}}, "space.model.activation"),
    ({"objective": {"metric": "val_r2"}}, "objective.metric"),
    ({"objective": {"metric": "nope"}}, "objective"),
    ({"max_trials": 10**6}, "max_trials"),
    ({"max_trials": 3}, "max_trials"),
    ({"max_concurrent": 999}, "max_concurrent"),
    ({"base": {"dataset": {"builtin": "nope"}}}, "base"),
    ({"strategy": "bayes"}, "strategy"),
])
def test_bad_requests_are_422_naming_the_path(client, auth, change, named) -> None:
    r = client.post("/v1/sweeps", json={**SWEEP, **change}, headers=auth)
    assert r.status_code == 422, r.text
    assert named in r.text, r.json()["message"]
