"""A sweep through real processes (`mlpctl api`, a real Celery worker): a small iris grid
with ASHA completes with every combination as a trial, the leaderboard best first, its
trials under GET /v1/jobs?sweep_id=, and its events ending with `end`."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import other_tenant, stack, tenant  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SWEEP = {"name": "iris-grid",
         "base": {"dataset": {"builtin": "iris"}, "device": "cpu",
                  "training": {"epochs": 4, "batch_size": 16}},
         "space": {"model.activation": {"choice": ["relu", "tanh"]},
                   "model.hidden_dims": {"choice": [[8], [16]]}},
         "strategy": "grid", "max_concurrent": 2,
         "objective": {"metric": "val_accuracy", "mode": "max"},
         "early_stopping": {"name": "asha", "grace_epochs": 1, "reduction_factor": 2}}


def test_grid_sweep_runs_every_trial(stack, tenant, other_tenant) -> None:  # noqa: F811
    client = tenant.client
    sweep = client.sweep(SWEEP)
    kinds = [kind for kind, _ in client.sweep_events(sweep["id"], timeout=200)]
    assert kinds[-1] == "end", (kinds, stack.logs())
    assert kinds.count("trial_started") == 4
    assert kinds.count("trial_finished") + kinds.count("trial_pruned") == 4
    done = client.get_sweep(sweep["id"])
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["counts"]["total"] == 4
    assert done["counts"]["succeeded"] + done["counts"]["pruned"] == 4
    board = client.leaderboard(sweep["id"])
    objectives = [t["objective"] for t in board]
    assert objectives == sorted(objectives, reverse=True)
    assert done["best"]["job_id"] == board[0]["job_id"]
    combos = {(t["values"]["model.activation"], tuple(t["values"]["model.hidden_dims"]))
              for t in board}
    assert len(combos) == 4
    jobs = list(client.list_jobs())
    trials = [j for j in jobs if j.get("sweep_id") == sweep["id"]]
    assert sorted(j["trial"] for j in trials) == [0, 1, 2, 3]
    assert all(j["attempts"] == 1 for j in trials)
    with pytest.raises(Exception, match="404"):
        other_tenant.client.get_sweep(sweep["id"])


PACKED = {"name": "iris-lr-pack",
          "base": {"dataset": {"builtin": "iris"}, "device": "cpu",
                   "model": {"hidden_dims": [16, 16], "dropout": 0.1},
                   "optimizer": {"name": "adam"},
                   "training": {"epochs": 6, "batch_size": 16, "seed": 3}},
          "space": {"optimizer.lr": {"choice": [0.001, 0.003, 0.01, 0.03]},
                    "training.seed": {"choice": [3, 4]}},
          "strategy": "grid", "max_concurrent": 8,
          "objective": {"metric": "val_accuracy", "mode": "max"}}


def test_trials_of_one_architecture_train_as_one_pack(stack, tenant) -> None:  # noqa: F811
    """The 8 trials (lr and seed vary) are made at once, and the worker that takes the first
    trains all of them as one batched model: each still has its own records (the first
    epoch's loss that of a lone run of its spec), log, weights and end."""
    from mlp_engine import fit

    client = tenant.client
    sweep = client.sweep(PACKED)
    kinds = [kind for kind, _ in client.sweep_events(sweep["id"], timeout=200)]
    assert kinds[-1] == "end", (kinds, stack.logs())
    done = client.get_sweep(sweep["id"])
    assert done["status"] == "succeeded" and done["counts"]["succeeded"] == 8, done
    board = client.leaderboard(sweep["id"])
    assert len({t["job_id"] for t in board}) == 8
    for trial in board:
        log = client.logs(trial["job_id"])
        assert "packed with 7 other trials" in log, log
        job = client.get(trial["job_id"])
        records = client.metrics(trial["job_id"])["epochs"]
        assert [r["epoch"] for r in records] == list(range(1, 7))
        lone = fit(job["spec"], num_threads=1).history
        assert abs(records[0]["train_loss"] - lone[0]["train_loss"]) < 1e-5, trial
        assert abs(records[-1]["val_accuracy"] - lone[-1]["val_accuracy"]) <= 0.1, trial
        assert job["artifacts"]["weights"]["sha256"]
