"""The log repository: each job's log lines, written by the worker that holds the job and
read by the API (GET /v1/jobs/{id}/logs).

Lines are numbered 1, 2, ... per job, across attempts: a new attempt continues after the
last line of the one before, whose lines stay. A batch is appended in one transaction that
first takes the job row with a conditional UPDATE, as store.jobs.record_epochs does: with a
`worker_id`, only while that worker holds the job (a worker whose lease lapsed writes
nothing), and in every case one writer at a time, so that two batches never pick the same
numbers. A job keeps at most `max_lines` lines; what comes after is replaced by one last
line, "log truncated after N lines", and then nothing more is kept. Deleting a job deletes
its lines (the foreign key cascades).

    (no lines) ──append──> 1..k ──append──> ... 1..max_lines ──append──> + the truncation note
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from .locks import hold_job
from .models import JobLogLine, utcnow

__all__ = [
    "LogLine",
    "append_log_lines",
    "add_log_lines",
    "get_log_lines",
    "last_line_no",
    "clean_message",
    "truncation_note",
    "MAX_LINES_PER_JOB",
    "MAX_LINE_CHARS",
]

MAX_LINES_PER_JOB = 10_000
MAX_LINE_CHARS = 2_000


class LogLine(NamedTuple):
    """A line not yet stored: when it was said, its level name and its text."""

    created_at: datetime
    level: str
    message: str


def truncation_note(max_lines: int) -> str:
    return f"log truncated after {max_lines} lines"


def clean_message(message: str, *, max_chars: int = MAX_LINE_CHARS) -> str:
    """One printable line of at most `max_chars` characters: line breaks become " | ",
    other control characters (NUL, which PostgreSQL refuses, and terminal escapes) a space."""
    parts = [p.strip() for p in message.splitlines() if p.strip()]
    text = " | ".join(parts)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    if len(text) > max_chars:
        text = text[:max_chars - 1] + "…"
    return text


def append_log_lines(
    session: Session,
    job_id: str,
    lines: Sequence[LogLine],
    *,
    worker_id: str | None = None,
    max_lines: int = MAX_LINES_PER_JOB,
    max_chars: int = MAX_LINE_CHARS,
) -> int | None:
    """Append `lines` after the job's last line; return the number of its last line now,
    or None when the job is gone or (with `worker_id`) no longer held by that worker, in
    which case nothing was written.

    Past `max_lines` lines, the first line that does not fit is replaced by the truncation
    note (so the last number is then `max_lines + 1`) and the rest are dropped, in this
    batch and every later one.
    """
    # held until the commit: the numbers read next are not taken by anyone else meanwhile
    if not hold_job(session, job_id, worker_id):
        return None
    last = add_log_lines(session, job_id, lines, max_lines=max_lines, max_chars=max_chars)
    session.commit()
    return last


def add_log_lines(session: Session, job_id: str, lines: Sequence[LogLine], *,
                  max_lines: int = MAX_LINES_PER_JOB, max_chars: int = MAX_LINE_CHARS) -> int:
    """The writes of `append_log_lines` in the caller's transaction, without its lease
    check or commit (the caller holds the job row: store.locks.hold_job or hold_jobs): the
    number of the job's last line now."""
    last = last_line_no(session, job_id)
    room = max(0, max_lines - last)
    rows = [{"job_id": job_id, "line_no": last + i + 1, "created_at": line.created_at,
             "level": (line.level or "INFO")[:8],
             "message": clean_message(line.message, max_chars=max_chars)}
            for i, line in enumerate(lines[:room])]
    if len(lines) > room and last <= max_lines:
        rows.append({"job_id": job_id, "line_no": max_lines + 1, "created_at": utcnow(),
                     "level": "WARNING", "message": truncation_note(max_lines)})
    if rows:
        session.execute(insert(JobLogLine), rows)
        last = rows[-1]["line_no"]
    return last


def last_line_no(session: Session, job_id: str) -> int:
    """The number of the job's last line; 0 when it has none."""
    return session.scalar(select(func.max(JobLogLine.line_no))
                          .where(JobLogLine.job_id == job_id)) or 0


def get_log_lines(session: Session, job_id: str, *, since: int | None = None,
                  limit: int | None = None) -> list[JobLogLine]:
    """The job's lines in order; `since=N` gives the lines after line N, `limit` at most
    that many of them."""
    q = select(JobLogLine).where(JobLogLine.job_id == job_id)
    if since is not None:
        q = q.where(JobLogLine.line_no > since)
    q = q.order_by(JobLogLine.line_no)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))
