"""SPEC 9 under SPEC 7's faults, with real processes: kill -9 of the API and of a worker (and
its training process) in the middle of a sweep. The sweep still ends with exactly
`max_trials` trials, each trial number once, each trial's epochs recorded once, the killed
trial resumed from its checkpoint rather than run again, and the same proposals as the same
sweep with the same seed in an unbroken run (the controller rebuilds its study from the
trial rows)."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from tests.faults.procs import Stack, wait_for
from tests.faults.test_faults_recovery import _parent, wide_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_TRIALS = 5
EPOCHS = 12


def sweep_request(name: str) -> dict[str, Any]:
    x, y = wide_rows(400, seed=4)
    return {"name": name,
            "base": {"dataset": {"inline": {"x": x, "y": y}}, "device": "cpu",
                     "model": {"hidden_dims": [16]},
                     "training": {"epochs": EPOCHS, "batch_size": 8, "seed": 2,
                                  "validation_split": 0.2}},
            "space": {"optimizer.lr": {"log_uniform": [0.003, 0.03]},
                      "model.activation": {"choice": ["relu", "tanh"]}},
            "strategy": "tpe", "seed": 5, "max_trials": MAX_TRIALS, "max_concurrent": 2,
            "objective": {"metric": "val_accuracy", "mode": "max"}}


def trial_rows(stack: Stack, sweep_id: str) -> list[Any]:
    from store.sweeps import trials_of

    with stack.session_factory() as session:
        rows = trials_of(session, sweep_id)
        for row in rows:
            session.expunge(row)
        return rows


def wait_sweep_done(client: Any, sweep_id: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        try:
            r = client.get(f"/v1/sweeps/{sweep_id}")
        except Exception:  # noqa: BLE001 - the API may be restarting
            return None
        body = r.json() if r.status_code == 200 else None
        return body if body and body["status"] in ("succeeded", "failed", "cancelled") \
            else None

    return wait_for(done, timeout, 0.3, f"sweep {sweep_id} ended")  # type: ignore[no-any-return]


def test_kill_9_of_the_api_and_a_worker_mid_sweep_loses_no_trial_and_runs_none_twice(
        stack: Stack) -> None:
    key = stack.new_key()
    with stack.http(key) as client:
        r = client.post("/v1/sweeps", json=sweep_request("killed-sweep"))
        assert r.status_code == 201, r.text
        sweep_id = r.json()["id"]

        # a trial past a few checkpoints, and a trial already finished before it (so the
        # proposals after the faults are model-based, from rows written before them)
        def running_trial() -> Any:
            rows = trial_rows(stack, sweep_id)
            ended = [t for t in rows if t.status == "succeeded"]
            busy = [t for t in rows if t.status == "running" and (t.checkpoint_epoch or 0) >= 3
                    and t.worker_id]
            return busy[0] if ended and busy else None

        victim = wait_for(running_trial, 120, 0.05, "a finished trial and one mid-run")
        child_pid = int(victim.worker_id.split(":")[1])
        owner = next(w for w in stack.live_workers() if _parent(child_pid) == w.pid)
        assert stack.api is not None
        stack.api.kill9()  # the API (and its reconciler) ...
        os.kill(child_pid, 9)  # ... a trial's training process ...
        owner.kill9()  # ... and its worker
        assert stack.job(victim.id).status == "running"
        # the trials the killed process was training: the victim, and the trials packed
        # with it (same architecture and batch size) when there were any
        killed = {t.id: t.checkpoint_epoch or 0 for t in trial_rows(stack, sweep_id)
                  if t.status == "running" and t.worker_id == victim.worker_id}
        assert victim.id in killed
        stack.start_api()
        stack.start_worker()

        done = wait_sweep_done(client, sweep_id, 200)
        assert done["status"] == "succeeded", (done, stack.logs())
        assert done["counts"]["total"] == MAX_TRIALS == done["counts"]["succeeded"]
        board = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["trials"]

    rows = trial_rows(stack, sweep_id)
    assert sorted(t.trial for t in rows) == list(range(MAX_TRIALS))
    assert len({t.id for t in rows}) == MAX_TRIALS == len(board)
    for t in rows:
        assert stack.epochs(t.id) == list(range(1, EPOCHS + 1)), t.trial
    # a killed trial ran again once, from its checkpoint; every other trial ran once
    assert {t.id: t.attempts for t in rows} == {t.id: 2 if t.id in killed else 1 for t in rows}
    for trial_id, checkpoint in killed.items():
        starts = re.findall(rf"job {trial_id}: training starts \(attempt \d+, from epoch "
                            r"(\d+)", stack.worker_logs())
        # (the workers' logs one after another: not in time order)
        assert sorted(int(e) for e in starts) == sorted([0, checkpoint]), starts
    assert killed[victim.id] >= 3

    # the same sweep with the same seed, unbroken, proposes the same trials
    with stack.http(key) as client:
        r = client.post("/v1/sweeps", json=sweep_request("unbroken-sweep"))
        assert r.status_code == 201, r.text
        again = wait_sweep_done(client, r.json()["id"], 200)
        assert again["status"] == "succeeded"
    twin = {t.trial: t.trial_values for t in trial_rows(stack, again["id"])}
    assert twin == {t.trial: t.trial_values for t in rows}
