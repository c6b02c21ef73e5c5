"""worker.pack_book.PackBook: the records and log lines of a pack's trials written together,
one transaction per flush, fenced by each trial's lease, on the real database."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from store import jobs
from store.logs import get_log_lines
from store.models import Job
from worker.callbacks import JobLedger, LeaseLost, MetricsRecorder
from worker.job_log import JobLog
from worker.pack_book import PackBook


class _State:
    def __init__(self) -> None:
        self.history: list[dict] = []

    def close(self, epoch: int) -> dict:
        record = {"epoch": epoch, "train_loss": 1.0 / epoch}
        self.history.append(record)
        return record


@pytest.fixture
def trials(make_job, session_factory):
    """Three claimed jobs of worker "me"."""
    ids = [make_job({"dataset": {"builtin": "iris"}, "training": {"epochs": 5}})
           for _ in range(3)]
    with session_factory() as s:
        for job_id in ids:
            jobs.claim_job(s, job_id, worker_id="me", lease_s=60)
    yield ids
    with session_factory() as s:  # ended: the reconciler tests of this database see none
        for job_id in ids:
            jobs.finish_job(s, job_id, "failed", error=("test", "ended by the test"))


def _pack(ids, session_factory, flush_s=3600.0):
    book = PackBook(session_factory, worker_id="me", limits=JobLog(
        job_id="x", session_factory=session_factory, worker_id="me").limits, flush_s=flush_s)
    members = []
    for job_id in ids:
        ledger = JobLedger(job_id=job_id, session_factory=session_factory, worker_id="me")
        job_log = JobLog(job_id=job_id, session_factory=session_factory, worker_id="me")
        book.join(ledger, job_log)
        state = _State()
        recorder = MetricsRecorder(ledger, flush_s=flush_s, book=book)
        recorder.on_train_begin(state)  # type: ignore[arg-type]
        members.append((ledger, job_log, recorder, state))
    return book, members


def _epochs(session_factory, job_id):
    with session_factory() as s:
        return [r["epoch"] for r in jobs.get_metrics(s, job_id)]


def _lines(session_factory, job_id):
    with session_factory() as s:
        return [line.message for line in get_log_lines(s, job_id)]


def _epoch(members, epoch):
    for _, job_log, recorder, state in members:
        job_log.info("epoch %s", epoch)
        recorder.on_epoch_end(state, state.close(epoch))


def test_every_trial_is_written_in_one_transaction_per_flush(trials, session_factory):
    book, members = _pack(trials, session_factory)
    for _, job_log, _, _ in members:
        job_log.info("start")
    _epoch(members, 1)
    # the pack's first epoch end writes at once (every trial's start, and what has closed)
    assert book.flushes == 1
    assert _lines(session_factory, trials[0]) == ["start", "epoch 1"]
    assert _lines(session_factory, trials[2]) == ["start"]
    assert _epochs(session_factory, trials[0]) == [1]
    assert _epochs(session_factory, trials[1]) == []
    _epoch(members, 2)
    _epoch(members, 3)
    assert book.flushes == 1  # not due again within flush_s
    book.flush()  # the pack trained: the rest, for all, in one more
    assert book.flushes == 2
    for job_id in trials:
        assert _epochs(session_factory, job_id) == [1, 2, 3]
        assert _lines(session_factory, job_id) == ["start", "epoch 1", "epoch 2", "epoch 3"]
        with session_factory() as s:
            job = s.get(Job, job_id)
            assert job.epoch == 3 and job.metrics_summary
    assert all(ledger.recorded_through == 3 for ledger, *_ in members)
    book.flush()  # nothing left: no transaction
    assert book.flushes == 2


def test_a_trial_another_worker_took_gets_nothing_and_stops(trials, session_factory):
    book, members = _pack(trials, session_factory)
    with session_factory() as s:
        s.get(Job, trials[1]).worker_id = "someone-else"
        s.commit()
    _epoch(members, 1)  # the first flush finds trial 1 taken
    _epoch(members, 2)
    book.flush()
    assert _epochs(session_factory, trials[0]) == [1, 2]
    assert _epochs(session_factory, trials[2]) == [1, 2]
    assert _epochs(session_factory, trials[1]) == [] and _lines(session_factory, trials[1]) == []
    _, taken_log, taken_recorder, state = members[1]
    assert taken_log.lease_lost and book.lost(trials[1])
    with pytest.raises(LeaseLost):  # its next epoch end stops it, as a lone job's would
        taken_recorder.on_epoch_end(state, state.close(3))


def test_a_database_error_keeps_everything_for_the_next_flush(trials, session_factory):
    book, members = _pack(trials, session_factory)
    real = book.session_factory

    def down():
        raise OperationalError("connect", {}, Exception("database is down"))

    book.session_factory = down
    for _, job_log, _, _ in members:
        job_log.info("start")
    with pytest.raises(OperationalError):  # to the trial whose epoch end flushed
        _epoch(members[:1], 1)
    assert members[0][0].recorded_through == 0
    book.session_factory = real
    _epoch(members[1:], 1)
    book.flush()
    for job_id in trials:
        assert _epochs(session_factory, job_id) == [1]
        assert _lines(session_factory, job_id) == ["start", "epoch 1"]


def test_one_heartbeat_renews_every_trial_and_notes_each_ones_flags(trials, session_factory):
    from worker.lease import PackHeartbeat

    cancelled, taken, running = trials
    with session_factory() as s:
        jobs.request_cancel(s, s.get(Job, cancelled))
        s.get(Job, taken).worker_id = "someone-else"
        s.commit()
        before = {j: s.get(Job, j).lease_expires_at for j in trials}
    heartbeat = PackHeartbeat(session_factory=session_factory, job_ids=trials, worker_id="me",
                              lease_s=600, interval_s=3600)
    heartbeat.beat()
    leases = heartbeat.leases
    assert leases[cancelled].cancel_requested and not leases[cancelled].lease_lost
    assert leases[taken].lease_lost and not leases[taken].cancel_requested
    assert not leases[running].lease_lost and not leases[running].cancel_requested
    with session_factory() as s:
        after = {j: s.get(Job, j).lease_expires_at for j in trials}
    assert after[running] > before[running] and after[cancelled] > before[cancelled]
    assert after[taken] == before[taken]  # another worker's: not touched
    heartbeat.start()  # and as a thread, until stopped
    heartbeat.stop()
    assert not heartbeat.is_alive()


def test_a_pack_trains_and_ends_each_trial_as_its_own(ctx, make_job, session_factory,
                                                      redis_client):
    """run_pack in-process: one trial cancelled before it starts, one taken over by another
    worker, the others trained together, each with its records, log, weights and end."""
    from messaging.live_events import set_cancel_flag
    from store.logs import get_log_lines
    from worker.packs import run_pack

    spec = {"dataset": {"builtin": "iris"}, "model": {"hidden_dims": [8]},
            "training": {"epochs": 4, "batch_size": 32}}
    ids = [make_job({**spec, "optimizer": {"name": "adam", "lr": lr}})
           for lr in (0.001, 0.01, 0.02, 0.05)]
    with session_factory() as s:
        claimed = [jobs.claim_job(s, job_id, worker_id=ctx.worker_id, lease_s=60)
                   for job_id in ids]
        for job in claimed:
            s.expunge(job)
        jobs.request_cancel(s, s.get(Job, ids[1]))
        s.get(Job, ids[2]).worker_id = "someone-else"
        s.commit()
    set_cancel_flag(redis_client, ids[1])
    statuses = run_pack(ctx, claimed)
    assert statuses == {ids[0]: "succeeded", ids[1]: "cancelled", ids[2]: "lease_lost",
                        ids[3]: "succeeded"}
    for job_id in (ids[0], ids[3]):
        assert _epochs(session_factory, job_id) == [1, 2, 3, 4]
        lines = _lines(session_factory, job_id)
        assert any("packed with 3 other trials" in line for line in lines), lines
        assert lines[-1].startswith("succeeded after epoch 4")
        with session_factory() as s:
            job = s.get(Job, job_id)
            assert job.weights_sha256 and job.device == "cpu" and job.finished_at
    assert _epochs(session_factory, ids[2]) == []  # another worker's: nothing written
    with session_factory() as s:
        assert s.get(Job, ids[2]).status == "running"
        assert [line.message for line in get_log_lines(s, ids[1])][-1] == "cancelled by request"
    for job_id in ids:  # ended: the reconciler tests of this database see none running
        with session_factory() as s:
            jobs.finish_job(s, job_id, "failed", error=("test", "ended by the test"))
