"""The log repository: numbering across attempts, `since`, the bound and its note, the lease
fence, clean lines, and deletion with the job."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from store import jobs
from store.logs import (
    LogLine,
    append_log_lines,
    clean_message,
    get_log_lines,
    last_line_no,
    truncation_note,
)
from store.models import JobLogLine, utcnow

BOTH_BACKENDS = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True)
pytestmark = BOTH_BACKENDS

SPEC = {"name": "iris", "dataset": {"builtin": "iris"}, "training": {"epochs": 5}}


def lines(*messages: str, level: str = "INFO") -> list[LogLine]:
    return [LogLine(utcnow(), level, m) for m in messages]


def running_job(session, tenant, worker_id="w1"):
    job, _ = jobs.create_job(session, tenant_id=tenant.id, spec=SPEC)
    assert jobs.claim_job(session, job.id, worker_id=worker_id, lease_s=60) is not None
    return job


def messages(session, job_id, **kw):
    return [(r.line_no, r.message) for r in get_log_lines(session, job_id, **kw)]


def test_lines_are_numbered_per_job_and_read_since(db_session, tenant):
    job = running_job(db_session, tenant)
    other = running_job(db_session, tenant)
    assert last_line_no(db_session, job.id) == 0
    assert append_log_lines(db_session, job.id, lines("a", "b"), worker_id="w1") == 2
    assert append_log_lines(db_session, other.id, lines("x"), worker_id="w1") == 1
    assert append_log_lines(db_session, job.id, lines("c"), worker_id="w1") == 3
    assert append_log_lines(db_session, job.id, [], worker_id="w1") == 3
    assert messages(db_session, job.id) == [(1, "a"), (2, "b"), (3, "c")]
    assert messages(db_session, job.id, since=1) == [(2, "b"), (3, "c")]
    assert messages(db_session, job.id, since=3) == []
    assert messages(db_session, job.id, since=1, limit=1) == [(2, "b")]
    assert messages(db_session, other.id) == [(1, "x")]
    row = get_log_lines(db_session, job.id)[0]
    assert row.level == "INFO" and row.created_at is not None


def test_the_next_attempt_continues_the_numbering(db_session, tenant):
    job = running_job(db_session, tenant, worker_id="first")
    append_log_lines(db_session, job.id, lines("attempt 1"), worker_id="first")
    # the first worker's lease lapses; another takes the job over
    later = utcnow() + timedelta(seconds=120)
    assert jobs.claim_job(db_session, job.id, worker_id="second", lease_s=60,
                          now=later) is not None
    assert append_log_lines(db_session, job.id, lines("late"), worker_id="first") is None
    assert append_log_lines(db_session, job.id, lines("attempt 2"), worker_id="second") == 2
    assert messages(db_session, job.id) == [(1, "attempt 1"), (2, "attempt 2")]


def test_a_worker_that_does_not_hold_the_job_writes_nothing(db_session, tenant):
    job = running_job(db_session, tenant, worker_id="holder")
    assert append_log_lines(db_session, job.id, lines("x"), worker_id="stranger") is None
    jobs.finish_job(db_session, job.id, "succeeded", worker_id="holder")
    # a finished job is no one's: its log is closed too
    assert append_log_lines(db_session, job.id, lines("after"), worker_id="holder") is None
    assert append_log_lines(db_session, "job_missing", lines("x")) is None
    assert messages(db_session, job.id) == []


def test_the_bound_keeps_one_truncation_note_and_nothing_after(db_session, tenant):
    job = running_job(db_session, tenant)
    assert append_log_lines(db_session, job.id, lines("1", "2", "3"), worker_id="w1",
                            max_lines=5) == 3
    # two fit, the third becomes the note, the fourth is dropped
    assert append_log_lines(db_session, job.id, lines("4", "5", "6", "7"), worker_id="w1",
                            max_lines=5) == 6
    assert append_log_lines(db_session, job.id, lines("8"), worker_id="w1",
                            max_lines=5) == 6
    rows = get_log_lines(db_session, job.id)
    assert [r.message for r in rows] == ["1", "2", "3", "4", "5", truncation_note(5)]
    assert rows[-1].message == "log truncated after 5 lines" and rows[-1].level == "WARNING"

    exact = running_job(db_session, tenant)
    assert append_log_lines(db_session, exact.id, lines("1", "2"), max_lines=2) == 2
    assert append_log_lines(db_session, exact.id, lines("3"), max_lines=2) == 3
    assert [r.message for r in get_log_lines(db_session, exact.id)] == [
        "1", "2", "log truncated after 2 lines"]


def test_lines_are_single_printable_and_bounded_in_length(db_session, tenant):
    job = running_job(db_session, tenant)
    append_log_lines(db_session, job.id,
                     lines("two\nlines", "nul\x00and \x1b[31mred", "x" * 50), max_chars=20)
    assert [m for _, m in messages(db_session, job.id)] == [
        "two | lines", "nul and  [31mred", "x" * 19 + "…"]
    assert clean_message("  \n  ") == ""


def test_concurrent_writers_never_share_a_number(db_session, session_factory, tenant):
    job = running_job(db_session, tenant)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with session_factory() as s:
                for i in range(5):
                    append_log_lines(s, job.id, lines(f"{n}-{i}"), worker_id="w1")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [n for n, _ in messages(db_session, job.id)] == list(range(1, 21))


def test_deleting_a_job_deletes_its_lines(db_session, tenant):
    job = running_job(db_session, tenant)
    append_log_lines(db_session, job.id, lines("a", "b"), worker_id="w1")
    jobs.finish_job(db_session, job.id, "failed", error=("diverged", "loss became NaN"))
    jobs.delete_job(db_session, jobs.get_job(db_session, job.id))
    assert db_session.query(JobLogLine).filter_by(job_id=job.id).count() == 0
