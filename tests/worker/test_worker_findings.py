"""Findings in the worker: stored on the job row as they are found, published as `finding`
events, said in the job's log; stop_on ends a job failed with error.type "rule" and its last
weights; a resumed attempt adds none twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_worker_runner import _Crash, collect_events, crash_after_epoch, load

from store.logs import get_log_lines
from store.models import Job, utcnow
from worker.runner import run_job

# one epoch of Adam at lr 0.1 kills most ReLUs of these layers (the calibration's config)
DEAD = {"name": "dead", "dataset": {"builtin": "digits"},
        "model": {"hidden_dims": [128, 128, 128]}, "optimizer": {"name": "adam", "lr": 0.1},
        "training": {"epochs": 6, "batch_size": 64, "seed": 0}}


def keys(findings):
    return sorted((f["rule"], f["layer"] or "") for f in findings)


def test_findings_are_stored_published_and_logged(ctx, make_job, session_factory,
                                                  redis_client):
    job_id = make_job(DEAD)
    drain, pubsub = collect_events(redis_client, job_id)
    assert run_job(job_id, ctx)["status"] == "succeeded"
    job, _ = load(session_factory, job_id)
    dead = [f for f in job.findings if f["rule"] == "dead_units"]
    assert dead and dead[0]["epoch"] == 1 and dead[0]["layer"].startswith("hidden.")
    assert len(keys(job.findings)) == len(set(keys(job.findings)))
    events = [e for e in drain() if e["type"] == "finding"]
    pubsub.close()
    assert keys(e["data"] for e in events) == keys(job.findings)
    with session_factory() as s:
        lines = [line.message for line in get_log_lines(s, job_id)]
    assert any("finding (warning, epoch 1" in line and "dead_units" in line for line in lines)


def test_stop_on_fails_the_job_with_its_finding_and_keeps_the_weights(ctx, make_job,
                                                                      session_factory):
    from mlp_engine.weights import load_model

    job_id = make_job({**DEAD, "diagnostics": {"stop_on": ["dead_units"]}})
    assert run_job(job_id, ctx)["status"] == "failed"
    job, rows = load(session_factory, job_id)
    (dead,) = [f for f in job.findings if f["rule"] == "dead_units" and f["epoch"] == 1][:1]
    assert job.error_type == "rule" and job.error_message == dead["message"]
    with session_factory() as s:
        lines = [line.message for line in get_log_lines(s, job_id)]
    assert any(line.startswith("stopped by rule dead_units (diagnostics.stop_on) at epoch 1")
               for line in lines)
    assert [r["epoch"] for r in rows] == [1]
    assert job.weights_uri and load_model(ctx.artifacts.local_path(job.weights_uri))


def test_a_static_stop_on_finding_stops_before_training(ctx, make_job, session_factory):
    from mlp_engine.findings import static_findings
    from mlp_engine.spec import JobSpec

    spec = {"dataset": {"builtin": "iris"}, "training": {"epochs": 3},
            "model": {"activation": "tanh", "init": "kaiming_normal"},
            "diagnostics": {"stop_on": ["init_activation_mismatch"]}}
    found = static_findings(JobSpec.model_validate(spec))
    job_id = make_job(spec, findings=found)
    assert run_job(job_id, ctx)["status"] == "failed"
    job, rows = load(session_factory, job_id)
    assert job.error_type == "rule" and job.error_message == found[0]["message"]
    assert rows == [] and job.weights_uri is None


def test_a_resumed_attempt_adds_no_finding_twice(make_ctx, make_job, session_factory,
                                                 monkeypatch):
    spec = {**DEAD, "training": {**DEAD["training"], "checkpoint_every": 2}}
    reference = make_job(spec)
    assert run_job(reference, make_ctx())["status"] == "succeeded"

    job_id = make_job(spec)
    with monkeypatch.context() as patched:
        crash_after_epoch(patched, 5)
        with pytest.raises(_Crash):
            run_job(job_id, make_ctx())
    job, _ = load(session_factory, job_id)
    assert job.checkpoint_epoch == 4 and job.findings
    with session_factory() as s:
        s.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    assert run_job(job_id, make_ctx())["status"] == "succeeded"
    job, _ = load(session_factory, job_id)
    ref, _ = load(session_factory, reference)
    assert keys(job.findings) == keys(ref.findings)
    assert [f["epoch"] for f in job.findings] == [f["epoch"] for f in ref.findings]


def test_stop_on_diverging_when_the_loss_goes_to_nan(ctx, make_job, session_factory):
    spec = {"dataset": {"builtin": "digits"}, "training": {"epochs": 5},
            "optimizer": {"name": "sgd", "lr": 8.0, "momentum": 0.9},
            "diagnostics": {"stop_on": ["diverging"]}}
    job_id = make_job(spec)
    assert run_job(job_id, ctx)["status"] == "failed"
    job, _ = load(session_factory, job_id)
    (diverging,) = [f for f in job.findings if f["rule"] == "diverging"]
    assert job.error_type == "rule" and job.error_message == diverging["message"]
    # without stop_on the same run fails as diverged, with the same finding
    plain = make_job({**spec, "diagnostics": {}})
    assert run_job(plain, ctx)["status"] == "failed"
    job, _ = load(session_factory, plain)
    assert job.error_type == "diverged" and "diverging" in {f["rule"] for f in job.findings}
