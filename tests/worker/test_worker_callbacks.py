"""The worker's callbacks on their own (no fit): what each does at an epoch's end and at the
end of training, and that Redis being away stops none of them."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis

from messaging.live_events import redis_from_url
from mlp_engine.errors import Cancelled
from store import jobs
from store.models import Job
from worker.callbacks import EventPublisher, JobLedger, LeaseLost, MetricsRecorder, StopWatcher


class _State:
    def __init__(self, epochs: int) -> None:
        self.history = [{"epoch": n, "train_loss": 1.0 / n} for n in range(1, epochs + 1)]
        self.epoch = epochs


@pytest.fixture
def claimed(make_job, session_factory):
    job_id = make_job({"dataset": {"builtin": "iris"}, "training": {"epochs": 5}})
    with session_factory() as s:
        jobs.claim_job(s, job_id, worker_id="me", lease_s=60)
    return job_id


def _epochs(session_factory, job_id):
    with session_factory() as s:
        return [r["epoch"] for r in jobs.get_metrics(s, job_id)]


def test_the_recorder_batches_and_writes_the_rest_at_the_end(claimed, session_factory):
    ledger = JobLedger(job_id=claimed, session_factory=session_factory, worker_id="me")
    recorder = MetricsRecorder(ledger, flush_s=3600)
    for n in (1, 2, 3):
        recorder.on_epoch_end(_State(n), {"epoch": n})
    assert _epochs(session_factory, claimed) == []  # not due yet
    recorder.on_train_end(_State(3), Cancelled("stop"))  # however training ended
    assert _epochs(session_factory, claimed) == [1, 2, 3]
    assert ledger.recorded_through == 3


def test_the_recorder_writes_nothing_once_the_lease_is_lost(claimed, session_factory):
    ledger = JobLedger(job_id=claimed, session_factory=session_factory, worker_id="me")
    recorder = MetricsRecorder(ledger, flush_s=3600)
    recorder.on_epoch_end(_State(1), {"epoch": 1})
    recorder.on_train_end(_State(1), LeaseLost("taken over"))
    assert _epochs(session_factory, claimed) == []

    with session_factory() as s:
        s.get(Job, claimed).worker_id = "someone-else"
        s.commit()
    with pytest.raises(LeaseLost):  # and a write that finds the job taken raises
        recorder.on_train_end(_State(1), None)
    assert _epochs(session_factory, claimed) == []


def test_an_earlier_attempts_epochs_are_neither_written_nor_published_again(
        claimed, session_factory):
    ledger = JobLedger(job_id=claimed, session_factory=session_factory, worker_id="me",
                       recorded_through=2)
    publisher = EventPublisher(None, job_id=claimed, after_epoch=2, interval_s=3600)
    for n in (1, 2, 3):
        publisher.on_epoch_end(_State(n), {"epoch": n})
    ledger.write(_State(3).history)
    assert _epochs(session_factory, claimed) == [3]
    assert len(publisher.events) == 1 and '"epoch":3' in publisher.events[0]


def test_redis_away_stops_neither_publishing_nor_the_stop_check(caplog, monkeypatch):
    job_id = f"job_{uuid.uuid4().hex}"
    gone = redis_from_url("redis://127.0.0.1:1/0")  # nothing listens there
    calls = []
    monkeypatch.setattr(gone, "execute_command",
                        lambda *a, **kw: calls.append(a) or _refuse())
    publisher = EventPublisher(gone, job_id=job_id, interval_s=0)
    watcher = StopWatcher(gone, job_id=job_id, poll_s=0)
    with caplog.at_level(logging.WARNING, logger="worker.callbacks"):
        for n in (1, 2, 3):
            publisher.on_epoch_end(_State(n), {"epoch": n})
            watcher.on_batch_end(_State(n))
            watcher.on_epoch_end(_State(n), {"epoch": n})
        publisher.on_train_end(_State(3), None)
    warnings = [r.getMessage() for r in caplog.records]
    # once per callback and job, naming the cause
    assert len(warnings) == 2 and all(job_id in w and "Error" in w for w in warnings), warnings
    assert publisher.events == []  # dropped, not piling up
    # and after a failure the watcher leaves Redis alone for a while: one call, not six
    assert len(calls) == 1


def _refuse():
    raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


def test_the_stop_watcher_sees_the_cancel_flag(redis_client):
    from messaging.live_events import clear_cancel_flag, set_cancel_flag

    job_id = f"job_{uuid.uuid4().hex}"
    watcher = StopWatcher(redis_client, job_id=job_id, poll_s=0)
    watcher.on_batch_end(_State(1))
    set_cancel_flag(redis_client, job_id)
    with pytest.raises(Cancelled):
        watcher.on_batch_end(_State(1))
    clear_cancel_flag(redis_client, job_id)
