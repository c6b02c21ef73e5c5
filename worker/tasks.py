"""The Celery task `worker.tasks.train_job(job_id)`; the work itself is worker.runner."""

from __future__ import annotations

import os
from typing import Any

from messaging.celery_factory import TRAIN_TASK

from .celery_app import celery_app, settings
from .runner import WorkerContext, run_job
from .sweeps import after_trials

__all__ = ["train_job", "context", "reset_context"]

_context: dict[int, WorkerContext] = {}


def reset_context() -> None:
    _context.clear()


def context() -> WorkerContext:
    pid = os.getpid()
    if pid not in _context:  # a forked child never reuses its parent's connections
        _context.clear()
        _context[pid] = WorkerContext.from_settings(settings)
    return _context[pid]


@celery_app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True,
                 ignore_result=True)
def train_job(job_id: str) -> dict[str, Any]:
    ctx = context()
    result = run_job(job_id, ctx)
    # a sweep's trials that ended (the job, and the trials packed with it): the sweep moves
    # on (SPEC 9), once for all of them when they were one pack
    after_trials(ctx, [job_id, *result.get("packed", ())])
    return result
