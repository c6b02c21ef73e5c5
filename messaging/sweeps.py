"""Sending a sweep's new trials (store.sweeps.advance_sweep's `enqueue`), and the sweep's
live channel: a hint, published when its trials change, that its event streams read the
database now (the database stays the truth; streams also poll it)."""

from __future__ import annotations

import logging

import redis as redis_lib
from celery import Celery
from sqlalchemy.orm import Session

from store.jobs import jobs_ahead, mark_enqueued
from store.models import Job

from .celery_factory import QUEUES
from .queues import enqueue_job, fair_priority

__all__ = ["trial_sender", "sweep_channel", "publish_sweep_hint"]

log = logging.getLogger(__name__)


def sweep_channel(sweep_id: str) -> str:
    return f"mlp:sweeps:{sweep_id}:events"


def trial_sender(celery: Celery, redis: redis_lib.Redis | None):  # type: ignore[no-untyped-def]
    """An `enqueue(session, job)` that sends a trial's job as POST /v1/jobs does."""

    def enqueue(session: Session, job: Job) -> None:
        enqueue_job(celery, job.id, job.queue if job.queue in QUEUES else "cpu", redis=redis,
                    priority=fair_priority(jobs_ahead(session, job)))
        mark_enqueued(session, job.id)

    return enqueue


def publish_sweep_hint(redis: redis_lib.Redis | None, sweep_id: str) -> None:
    """Tell the sweep's event streams to look at the database now (lost: they poll)."""
    if redis is None:
        return
    try:
        redis.publish(sweep_channel(sweep_id), "changed")
    except redis_lib.RedisError as exc:
        log.warning("could not publish a hint for sweep %s: %s", sweep_id, exc)
