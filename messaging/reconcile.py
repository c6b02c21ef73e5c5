"""`recover_jobs`: make Redis agree with the database, the source of truth; and
`advance_sweeps`: move every unfinished sweep forward (a controller step that a killed
worker or API never took is taken here).

Run by the API process (service/reconciler.py: at start and every
MLP_RECONCILE_INTERVAL_S); see messaging.celery_factory for why it runs there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import redis as redis_lib
from celery import Celery
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from store.jobs import finish_job, jobs_ahead
from store.models import Job, JobStatus, utcnow

from .celery_factory import QUEUES
from .live_events import publish_status, queued_key
from .queues import enqueue_job, fair_priority

__all__ = ["recover_jobs", "advance_sweeps", "RECOVER_LOCK"]

log = logging.getLogger(__name__)

RECOVER_LOCK = "mlp:recover:lock"


def recover_jobs(
    session_factory: Callable[[], Session],
    redis: redis_lib.Redis,
    celery: Celery,
    *,
    grace_s: float = 15.0,
    lock_s: float | None = None,
) -> dict[str, int]:
    """Make Redis agree with the database, the source of truth. Safe to run anywhere,
    any number of times (a duplicate message is harmless: the claim lets one through).

    - queued jobs whose broker message is gone (no `queued` marker, enqueued more than
      `grace_s` ago) are queued again;
    - running jobs whose lease expired (their worker died) are queued again, to resume
      from their last checkpoint on the next claim;
    - cancelling jobs whose lease expired are marked cancelled.

    With `lock_s`, the sweep first takes the Redis key `mlp:recover:lock` for that many
    seconds and does nothing when another process holds it (one sweep per period across
    several API processes).
    """
    now = utcnow()
    counts = {"requeued": 0, "cancelled": 0}
    if lock_s is not None and not redis.set(RECOVER_LOCK, "1", nx=True,
                                            px=max(1, int(lock_s * 1000))):
        return counts
    with session_factory() as session:
        candidates = list(session.scalars(select(Job).where(or_(
            and_(Job.status == JobStatus.QUEUED,
                 or_(Job.enqueued_at.is_(None),
                     Job.enqueued_at < now - timedelta(seconds=grace_s))),
            and_(Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
                 Job.lease_expires_at < now),
        ))))
        for job in candidates:
            if job.status == JobStatus.CANCELLING:
                if finish_job(session, job.id, JobStatus.CANCELLED):
                    counts["cancelled"] += 1
                    session.refresh(job)
                    publish_status(redis, job)
                continue
            if redis.exists(queued_key(job.id)):
                continue  # a message is waiting in the broker
            log.info("re-queueing %s job %s on %s", job.status, job.id, job.queue)
            enqueue_job(celery, job.id, job.queue if job.queue in QUEUES else "cpu",
                        redis=redis, priority=fair_priority(jobs_ahead(session, job)))
            job.enqueued_at = now
            session.commit()
            counts["requeued"] += 1
    return counts


def advance_sweeps(session_factory: Callable[[], Session], redis: redis_lib.Redis,
                   celery: Celery) -> dict[str, int]:
    """Run store.sweeps.advance_sweep for every sweep not yet finished: trials that a
    killed process never made are made, sweeps whose trials all ended are ended. Safe
    anywhere, any number of times (the sweep row lock and the unique trial numbers)."""
    from store.sweeps import active_sweep_ids, advance_sweep

    from .sweeps import publish_sweep_hint, trial_sender

    counts = {"sweeps": 0, "trials": 0, "finished": 0}
    enqueue = trial_sender(celery, redis)
    with session_factory() as session:
        for sweep_id in active_sweep_ids(session):
            try:
                done = advance_sweep(session, sweep_id, enqueue=enqueue)
            except Exception as exc:  # one sweep's trouble must not stop the others
                session.rollback()
                log.warning("could not advance sweep %s: %s", sweep_id, exc)
                continue
            counts["sweeps"] += 1
            counts["trials"] += len(done.created)
            counts["finished"] += int(done.finished)
            if done.created or done.finished:
                publish_sweep_hint(redis, sweep_id)
    return counts
