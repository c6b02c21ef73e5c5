"""The Celery app factory shared by the API (which only sends) and the workers.

The API enqueues by task name with only the job id, so it never imports torch or the
worker's code. Redelivery is safe because a worker claims a job in the database before it
trains (store.jobs.claim_job); `recover_jobs` re-queues what the database says should be
queued when Redis has lost it (restarted and emptied, or a worker that died).

The reconciler is `recover_jobs` run by the API process (messaging.reconcile, run by service/reconciler.py: at start
and every MLP_RECONCILE_INTERVAL_S), and nothing else runs it. Why there: the API is the
one process every deployment runs (compose, standalone) and the only one that creates jobs,
so the gap it covers (a job stored while Redis was away) is its own; it needs no extra
process (a Celery beat would be one more singleton to run, scheduling through the very
Redis that may have been emptied); and workers stay consumers only, so a queue with no
worker still shows the jobs that wait for one. Several API processes may all run it:
`lock_s` lets one sweep per period, and a duplicate message is harmless anyway.

Known Celery-on-Redis traps and where each is handled:
- a late-acked message that outlives the visibility timeout is delivered again while the
  first delivery still runs: the second finds a live lease and returns (claim_job);
- a killed training process: `task_reject_on_worker_lost` puts its message back, the next
  delivery sees the process is gone and takes the job over from its last checkpoint;
  every claim counts an attempt, so a job that always kills its worker fails after
  MLP_MAX_ATTEMPTS instead of looping;
- revokes live only in worker memory: cancels are a database state plus a Redis flag
  (messaging.live_events), never a Celery revoke;
- torch with CUDA does not survive fork: the worker's main process never initialises CUDA
  (worker.celery_app), only its forked training processes do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import Queue

from .redis_url import celery_transport_options, celery_url

__all__ = ["TRAIN_TASK", "QUEUES", "PRIORITY_LEVELS", "PRIORITY_SEP", "celery_url",
           "make_celery", "describe", "queue_keys"]

TRAIN_TASK = "worker.tasks.train_job"
QUEUES = ("cpu", "gpu")
# message priorities on Redis: 0 (first) to PRIORITY_LEVELS - 1; level p > 0 of queue q is
# the Redis list f"{q}{PRIORITY_SEP}{p}", level 0 the list q itself
PRIORITY_LEVELS = 10
PRIORITY_SEP = ":"
# a message may wait in the broker for as long as the longest job runs, and more
VISIBILITY_MARGIN_S = 3600


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s messages, one per priority level, first first."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in range(PRIORITY_LEVELS)]


def make_celery(redis_url: str, *, include: Iterable[str] = (),
                max_runtime_s: float = 86_400.0, name: str = "mlp") -> Celery:
    """A Celery app with the shared configuration (see the module docstring). `redis_url`
    is any REDIS_URL form (messaging.redis_url), Sentinel included."""
    url = celery_url(redis_url)
    sentinel = celery_transport_options(redis_url)  # the master's name, with Sentinel
    app = Celery(name, broker=url, backend=url, include=list(include))
    visibility = int(max_runtime_s) + VISIBILITY_MARGIN_S
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],
        task_default_queue="cpu",
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # the database holds every outcome; nobody reads task results
        task_ignore_result=True,
        result_expires=3600,
        # priorities (messaging.queues.fair_priority): one Redis list per level, 0 first
        broker_transport_options={"visibility_timeout": visibility,
                                  "priority_steps": list(range(PRIORITY_LEVELS)),
                                  "sep": PRIORITY_SEP, "queue_order_strategy": "priority",
                                  **sentinel},
        result_backend_transport_options={"visibility_timeout": visibility, **sentinel},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    app.conf.mlp_redis_url = redis_url
    return app


def describe(app: Celery) -> dict[str, Any]:
    """The settings that matter, for logs and tests."""
    keys = ("task_acks_late", "worker_prefetch_multiplier", "task_create_missing_queues",
            "task_default_queue", "broker_transport_options", "task_reject_on_worker_lost")
    return {k: app.conf.get(k) for k in keys}
