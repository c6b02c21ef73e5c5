"""One delivery of a job, run in-process (no Celery): claim, train, record, finish."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from conftest import wait_for

from messaging.live_events import events_channel, set_cancel_flag
from service.schemas import JobPublic
from store import jobs
from store.models import Job, JobMetric, utcnow
from worker import callbacks as worker_callbacks
from worker import runner as worker_runner
from worker.runner import classify_error, run_job

IRIS = {"name": "iris", "dataset": {"builtin": "iris"}, "model": {"hidden_dims": [8]},
        "training": {"epochs": 4, "batch_size": 32}}


def iris(**training):
    return {**IRIS, "training": {**IRIS["training"], **training}}


def load(session_factory, job_id):
    with session_factory() as s:
        job = s.get(Job, job_id)
        rows = jobs.get_metrics(s, job_id)
        return job, rows


def collect_events(redis_client, job_id):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(events_channel(job_id))
    pubsub.get_message(timeout=1)
    got = []

    def drain():
        while (msg := pubsub.get_message(timeout=0.2)) is not None:
            if msg["type"] == "message":
                got.append(json.loads(msg["data"]))
        return got

    return drain, pubsub


def test_success_records_every_epoch_and_writes_weights(ctx, make_job, session_factory,
                                                        redis_client):
    from mlp_engine.weights import load_model

    job_id = make_job(iris())
    drain, pubsub = collect_events(redis_client, job_id)
    outcome = run_job(job_id, ctx)
    assert outcome == {"job_id": job_id, "status": "succeeded"}
    job, rows = load(session_factory, job_id)
    assert job.status == "succeeded" and job.attempts == 1 and job.device == "cpu"
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds"} <= set(rows[0])
    public = JobPublic.from_row(job).model_dump(mode="json")
    assert public["progress"] == {"epoch": 4, "epochs": 4}
    assert public["metrics"]["final"]["epoch"] == 4
    assert public["metrics"]["best_epoch"] in (1, 2, 3, 4)
    weights = public["artifacts"]["weights"]
    assert ctx.artifacts.size(job.weights_uri) == weights["bytes"]
    model = load_model(ctx.artifacts.local_path(job.weights_uri))
    assert model.spec.model.hidden_dims == [8]
    assert ctx.artifacts.exists(f"jobs/{job_id}/weights.pt")

    events = drain()
    pubsub.close()
    kinds = [(e["type"], e["data"].get("status") or e["data"].get("epoch")) for e in events]
    assert kinds[0] == ("status", "running")
    assert [k for k in kinds if k[0] == "metrics"] == [("metrics", e) for e in (1, 2, 3, 4)]
    assert kinds[-1] == ("status", "succeeded")
    # a status event names the job and its status; streams read the rest from the database
    assert events[-1]["data"] == {"id": job_id, "status": "succeeded"}

    # a second delivery of a finished job does nothing
    again = run_job(job_id, ctx)
    assert again["claimed"] is False and again["status"] == "succeeded"
    assert load(session_factory, job_id)[0].attempts == 1


def test_delivery_during_a_live_lease_does_nothing(ctx, make_job, session_factory):
    job_id = make_job(iris())
    with session_factory() as s:
        jobs.claim_job(s, job_id, worker_id="someone-else", lease_s=60)
    assert run_job(job_id, ctx)["claimed"] is False
    job, rows = load(session_factory, job_id)
    assert job.status == "running" and job.worker_id == "someone-else" and rows == []


class _Crash(BaseException):
    """Stands in for kill -9: nothing in the job runner catches it."""


def crash_after_epoch(monkeypatch, epoch: int) -> None:
    """Make the next run_job die right after `epoch` (every worker callback ran for it)."""
    from mlp_engine.callbacks import Callback

    class CrashAt(Callback):
        def on_epoch_end(self, state, record):
            if record["epoch"] == epoch:
                raise _Crash()

    original = worker_runner.job_callbacks
    monkeypatch.setattr(worker_runner, "job_callbacks",
                        lambda job, **kw: [*original(job, **kw), CrashAt()])


def test_resume_after_a_crash_gives_the_same_weights(make_ctx, make_job, session_factory,
                                                     monkeypatch):
    import torch

    from mlp_engine.weights import load_model

    spec = iris(epochs=6, checkpoint_every=2, seed=3)
    ctx = make_ctx()
    reference = make_job(spec)
    assert run_job(reference, ctx)["status"] == "succeeded"

    job_id = make_job(spec)
    with monkeypatch.context() as patched:
        crash_after_epoch(patched, 5)
        with pytest.raises(_Crash):
            run_job(job_id, make_ctx())
    job, rows = load(session_factory, job_id)
    assert job.status == "running" and job.checkpoint_epoch == 4

    # the lease runs out; the next delivery resumes from epoch 4
    with session_factory() as s:
        s.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    assert run_job(job_id, make_ctx())["status"] == "succeeded"
    job, rows = load(session_factory, job_id)
    assert job.attempts == 2 and [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    with session_factory() as s:
        assert s.query(JobMetric).filter_by(job_id=job_id).count() == 6
    ref_job, _ = load(session_factory, reference)
    a = load_model(ctx.artifacts.local_path(ref_job.weights_uri)).state_dict()
    b = load_model(ctx.artifacts.local_path(job.weights_uri)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_callbacks_write_the_checkpoint_first_and_check_for_stops_last(ctx, make_job,
                                                                      session_factory):
    from mlp_engine.rule_monitor import RuleMonitor
    from worker.callbacks import CheckpointWriter, EventPublisher, MetricsRecorder, StopWatcher

    job_id = make_job(iris())
    with session_factory() as s:
        job = jobs.claim_job(s, job_id, worker_id=ctx.worker_id, lease_s=60)
    from mlp_engine.spec import JobSpec

    callbacks = worker_runner.job_callbacks(job, spec=JobSpec.model_validate(job.spec),
                                            ctx=ctx)
    assert [type(cb) for cb in callbacks] == [RuleMonitor, CheckpointWriter, MetricsRecorder,
                                              EventPublisher, StopWatcher]
    assert callbacks[1].ledger is callbacks[2].ledger  # one view of what is written


def test_an_epochs_metrics_are_recorded_and_published_after_its_checkpoint(
        make_ctx, make_job, session_factory, monkeypatch):
    """SPEC 7: with a checkpoint due at an epoch, that epoch's record reaches the database
    with (or after) the checkpoint's key, and its event is published after that."""
    every = 2
    ctx = make_ctx(metrics_flush_s=0)  # every epoch written at once: the most chances to err
    job_id = make_job(iris(epochs=7, checkpoint_every=every))
    named: list[int] = [0]  # the checkpoint epochs the job row has named, in order
    early: list[str] = []
    record_epochs = worker_callbacks.record_epochs

    def watched_write(session, job_id, records, **kw):
        held = record_epochs(session, job_id, records, **kw)
        if kw.get("checkpoint_epoch") is not None:
            named.append(kw["checkpoint_epoch"])
        early.extend(f"recorded {r['epoch']} with checkpoint {named[-1]}" for r in records
                     if r["epoch"] % every == 0 and r["epoch"] > named[-1])
        return held

    publish = worker_callbacks.EventPublisher.publish
    published: list[int] = []

    def watched_publish(self):
        epochs = [json.loads(e)["data"]["epoch"] for e in self.events]
        published.extend(epochs)
        early.extend(f"published {e} with checkpoint {named[-1]}" for e in epochs
                     if e % every == 0 and e > named[-1])
        publish(self)

    monkeypatch.setattr(worker_callbacks, "record_epochs", watched_write)
    monkeypatch.setattr(worker_callbacks.EventPublisher, "publish", watched_publish)
    assert run_job(job_id, ctx)["status"] == "succeeded"
    assert early == []
    assert named == [0, 2, 4, 6] and published == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("content, cause", [
    (None, "cannot be read from the artifact store (ArtifactError: artifact "),
    (b"half a checkpoint", "the file (17 bytes) is not a torch checkpoint ("),
    ("torch", "not a checkpoint of this engine (format 'someone-else/1'"),
], ids=["missing", "garbage", "wrong-format"])
def test_an_unreadable_checkpoint_fails_the_job_naming_it(ctx, make_job, session_factory,
                                                          content, cause):
    """A job whose checkpoint cannot be read fails with the key and the cause; it does not
    train again from epoch 0."""
    import io

    import torch

    job_id = make_job(iris())
    key = f"jobs/{job_id}/checkpoint-a1-e2.pt"
    if content == "torch":
        buffer = io.BytesIO()
        torch.save({"format": "someone-else/1", "epoch": 2}, buffer)
        content = buffer.getvalue()
    if content is not None:
        ctx.artifacts.put_bytes(key, content)
    with session_factory() as s:
        job = s.get(Job, job_id)
        job.checkpoint_uri, job.checkpoint_epoch = key, 2
        s.commit()

    assert run_job(job_id, ctx)["status"] == "failed"
    job, rows = load(session_factory, job_id)
    assert job.error_type == "checkpoint_unreadable"
    assert job.error_message.startswith(f"cannot resume from checkpoint {key}: ")
    assert cause in job.error_message, job.error_message
    assert "\n" not in job.error_message and "\x1b" not in job.error_message
    assert rows == [] and job.epoch == 0  # nothing trained


def test_divergence_fails_with_the_engines_message(ctx, make_job, session_factory):
    job_id = make_job({"dataset": {"builtin": "diabetes"}, "task": "regression",
                       "optimizer": {"name": "sgd", "lr": 10},
                       "training": {"epochs": 20, "standardize": False}})
    assert run_job(job_id, ctx)["status"] == "failed"
    job, _ = load(session_factory, job_id)
    error = JobPublic.from_row(job).model_dump(mode="json")["error"]
    assert error["type"] == "diverged"
    assert error["message"].startswith("loss became") and "at epoch" in error["message"]


def test_max_runtime_fails_and_keeps_metrics(ctx, make_job, session_factory):
    job_id = make_job(iris(epochs=10_000, max_runtime_s=0.5))
    started = time.monotonic()
    assert run_job(job_id, ctx)["status"] == "failed"
    assert time.monotonic() - started < 10
    job, rows = load(session_factory, job_id)
    assert job.error_type == "time_limit"
    assert job.error_message.startswith("exceeded max_runtime_s (0.5 s)")
    assert len(rows) == job.epoch > 0


def test_cancel_while_running(ctx, make_job, session_factory, redis_client):
    job_id = make_job(iris(epochs=10_000))
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_job(job_id, ctx)))
    thread.start()
    wait_for(lambda: load(session_factory, job_id)[0].epoch >= 3, 20)
    with session_factory() as s:
        assert jobs.request_cancel(s, s.get(Job, job_id)).status == "cancelling"
    set_cancel_flag(redis_client, job_id)
    thread.join(20)
    assert result["status"] == "cancelled"
    job, rows = load(session_factory, job_id)
    assert job.status == "cancelled" and job.error_type is None
    assert len(rows) == job.epoch >= 3  # metrics kept, every one
    assert not redis_client.exists(f"mlp:jobs:{job_id}:cancel")
    assert run_job(job_id, ctx)["claimed"] is False  # never run again


def test_cancel_seen_in_the_database_without_redis_flag(make_ctx, make_job, session_factory):
    ctx = make_ctx(lease_seconds=2)  # heartbeat every 0.5 s
    job_id = make_job(iris(epochs=10_000))
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_job(job_id, ctx)))
    thread.start()
    wait_for(lambda: load(session_factory, job_id)[0].status == "running", 20)
    with session_factory() as s:
        jobs.request_cancel(s, s.get(Job, job_id))
    thread.join(20)
    assert result["status"] == "cancelled"


def test_lost_lease_stops_without_touching_the_job(make_ctx, make_job, session_factory):
    ctx = make_ctx(lease_seconds=2)
    job_id = make_job(iris(epochs=10_000))
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_job(job_id, ctx)))
    thread.start()
    wait_for(lambda: load(session_factory, job_id)[0].epoch >= 1, 20)
    with session_factory() as s:
        s.get(Job, job_id).worker_id = "the-new-owner"
        s.commit()
    thread.join(20)
    assert result["status"] == "lease_lost"
    job, _ = load(session_factory, job_id)
    assert job.status == "running" and job.worker_id == "the-new-owner"


def test_out_of_attempts_fails_clearly(ctx, make_job, session_factory, redis_client):
    job_id = make_job(iris())
    with session_factory() as s:
        job = s.get(Job, job_id)
        job.status, job.attempts, job.worker_id = "running", 3, "dead"
        job.lease_expires_at = utcnow() - timedelta(seconds=5)
        s.commit()
    drain, pubsub = collect_events(redis_client, job_id)
    assert run_job(job_id, ctx)["status"] == "failed"
    job, _ = load(session_factory, job_id)
    assert job.error_type == "max_attempts" and "MLP_MAX_ATTEMPTS=3" in job.error_message
    assert drain()[-1]["data"]["status"] == "failed"
    pubsub.close()


def test_uploaded_dataset_with_string_labels(ctx, make_job, session_factory, tenant_id):
    from store.models import Dataset, new_id

    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 2 else 'no'}"
                            for i in range(60)]
    ds_id = new_id("ds")
    key = f"datasets/{ds_id}/data.csv"
    n, digest = ctx.artifacts.put_bytes(key, "\n".join(rows).encode())
    with session_factory() as s:
        s.add(Dataset(id=ds_id, tenant_id=tenant_id, name="yn", format="csv",
                      target=["label"], n_rows=60, n_features=2, n_classes=2,
                      class_labels=["no", "yes"], feature_names=["a", "b"],
                      target_numeric=False, bytes=n, sha256=digest, uri=key))
        s.commit()
    job_id = make_job({"dataset": {"id": ds_id}, "training": {"epochs": 2}},
                      dataset_id=ds_id)
    assert run_job(job_id, ctx)["status"] == "succeeded", load(session_factory, job_id)[0].error_message
    from mlp_engine.weights import load_model

    job, rows = load(session_factory, job_id)
    assert len(rows) == 2
    model = load_model(ctx.artifacts.local_path(job.weights_uri))
    assert list(model.preprocessing["class_labels"]) == ["no", "yes"]
    # the file's column names, not x0, x1
    assert model.preprocessing["feature_names"] == ["a", "b"]
    assert model.preprocessing["target_names"] == ["label"]


@pytest.mark.parametrize("spec", [
    {"dataset": {"builtin": "iris"}, "training": {"epochs": 2}, "model": {"output_dim": 7}},
    {"dataset": {"builtin": "iris"}, "optimizer": {"name": "sgd", "lr": 1e12}},
])
def test_a_bad_spec_fails_with_a_message(ctx, make_job, session_factory, spec):
    job_id = make_job(spec)
    assert run_job(job_id, ctx)["status"] == "failed"
    job, _ = load(session_factory, job_id)
    assert job.error_type == "invalid_spec", job.error_message
    assert "Traceback" not in job.error_message and job.error_message


def test_metrics_writes_are_batched(make_ctx, make_job, session_factory, monkeypatch):
    calls = []
    original = worker_callbacks.record_epochs

    def counting(session, job_id, records, **kw):
        calls.append(len(records))
        return original(session, job_id, records, **kw)

    monkeypatch.setattr(worker_callbacks, "record_epochs", counting)
    ctx = make_ctx(metrics_flush_s=1.0, checkpoint_interval_s=3600)
    job_id = make_job({"dataset": {"builtin": "xor", "params": {"n_samples": 64}},
                       "model": {"hidden_dims": [4]},
                       "training": {"epochs": 300, "batch_size": 64, "validation_split": 0}})
    assert run_job(job_id, ctx)["status"] == "succeeded"
    job, rows = load(session_factory, job_id)
    assert len(rows) == 300 and sum(calls) == 300
    assert len(calls) <= 15  # one write per second at most, plus the last


def test_classify_error_never_leaks_a_traceback():
    try:
        raise RuntimeError("boom\nTraceback (most recent call last): ...")
    except RuntimeError as exc:
        status, (etype, message) = classify_error(exc)
    assert status == "failed" and etype == "internal_error"
    assert "RuntimeError: boom" in message and "\n" not in message and "Traceback" not in message


def test_thread_count_follows_cores_concurrency_and_standalone(monkeypatch):
    from worker import settings as ws

    monkeypatch.setattr(ws, "usable_cores", lambda: 2)
    s = ws.WorkerSettings(worker_threads=None)
    assert s.torch_threads(1) == 2
    assert s.torch_threads(2) == 1
    assert s.model_copy(update={"standalone": True}).torch_threads(1) == 1
    assert s.model_copy(update={"worker_threads": 3}).torch_threads(2) == 3
    assert s.queues(cuda=False) == ["cpu"] and s.queues(cuda=True) == ["gpu", "cpu"]


def test_a_dead_local_worker_is_taken_over_at_once(ctx, make_job, session_factory):
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job_id = make_job(iris())
    with session_factory() as s:
        jobs.claim_job(s, job_id, worker_id=f"{socket.gethostname()}:{gone.pid}:abc",
                       lease_s=600)
    assert run_job(job_id, ctx)["status"] == "succeeded"
    job, rows = load(session_factory, job_id)
    assert job.attempts == 2 and len(rows) == 4


def test_a_job_over_its_memory_limit_fails_once_and_the_worker_lives_on(
        make_ctx, make_job, session_factory):
    """The API's estimate is the first line; when it is wrong, the worker's hard limit
    (RLIMIT_DATA for the job) fails that job as out of memory, with no redelivery."""
    ctx = make_ctx(max_job_memory_bytes=64 * 2**20)
    big = {"dataset": {"builtin": "moons", "params": {"n_samples": 100_000}},
           "model": {"hidden_dims": [2048, 2048]},
           "training": {"epochs": 1, "batch_size": 65_536, "validation_split": 0}}
    job_id = make_job(big)
    assert run_job(job_id, ctx)["status"] == "failed"
    job, _ = load(session_factory, job_id)
    assert job.error_type == "out_of_memory", job.error_message
    assert "MLP_MAX_JOB_MEMORY_BYTES" in job.error_message and job.attempts == 1
    # the limit is gone with the job: the same process trains the next one
    ok = make_job(iris(epochs=2))
    assert run_job(ok, ctx)["status"] == "succeeded"
