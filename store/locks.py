"""Row locks that serialise a check with the write it guards (quotas, limits, deletes).

On PostgreSQL `SELECT ... FOR UPDATE` holds the row until the transaction ends; SQLite has
no row locks (the clause is dropped) but lets one writer at a time, so there a guarded
write inserts first and checks after, while it holds the database's write lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from .models import Job, JobStatus, utcnow

__all__ = ["lock_row", "hold_job", "hold_jobs", "held_by"]


def lock_row(session: Session, model: Any, row_id: str) -> bool:
    """Lock the row of `model` with this id until the transaction ends; False if none."""
    return session.scalar(select(model.id).where(model.id == row_id).with_for_update()) \
        is not None


def held_by(worker_id: str) -> ColumnElement[bool]:
    """The condition of a job that `worker_id` holds: its worker, running or cancelling
    (the lease's own writes: hold_job, hold_jobs, store.jobs.renew_lease(s))."""
    return and_(Job.worker_id == worker_id,
                Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)))


def hold_job(session: Session, job_id: str, worker_id: str | None) -> bool:
    """Lock the job's row for a write of its worker, in one conditional UPDATE: True while
    `worker_id` (None: anyone) holds the running job, else roll back and answer False.

    The row stays locked (PostgreSQL) or the database write-locked (SQLite) until the
    commit, so a take-over by another worker waits for this write, and what is read next
    is not changed by anyone else meanwhile."""
    q = update(Job).where(Job.id == job_id)
    if worker_id is not None:
        q = q.where(held_by(worker_id))
    held = session.execute(q.values(updated_at=utcnow())
                           .execution_options(synchronize_session=False)).rowcount
    if held != 1:
        session.rollback()
        return False
    return True


def hold_jobs(session: Session, job_ids: Sequence[str], worker_id: str) -> set[str]:
    """`hold_job` for several jobs of one worker in one conditional UPDATE (the trials of a
    pack, worker.pack_book): the ids of those it holds, locked as hold_job locks one. Those
    it does not hold are not touched, so nothing is rolled back: the caller writes for the
    others and commits."""
    if not job_ids:
        return set()
    q = (update(Job).where(Job.id.in_(sorted(job_ids)), held_by(worker_id))
         .values(updated_at=utcnow()).returning(Job.id)
         .execution_options(synchronize_session=False))
    return set(session.scalars(q))
