"""The Celery configuration shared by the API (which only sends) and the workers.

The API enqueues by task name with only the job id, so it never imports torch or the
worker's code. Redelivery is safe because a worker claims a job in the database before it
trains (store.jobs.claim_job); `recover_jobs` re-queues what the database says should be
queued when Redis has lost it (restarted and emptied, or a worker that died).

The reconciler is `recover_jobs` run by the API process (service/reconciler.py: at start
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
  (store.events), never a Celery revoke;
- torch with CUDA does not survive fork: the worker's main process never initialises CUDA
  (worker.celery_app), only its forked training processes do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis as redis_lib
from celery import Celery
from kombu import Queue
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from .events import publish_status, queued_key, redis_from_url
from .models import Job, JobStatus, utcnow

__all__ = [
    "TRAIN_TASK",
    "QUEUES",
    "celery_url",
    "make_celery",
    "enqueue_job",
    "queue_for_device",
    "gpu_worker_alive",
    "gpu_worker_key",
    "recover_jobs",
]

log = logging.getLogger(__name__)

TRAIN_TASK = "worker.tasks.train_job"
QUEUES = ("cpu", "gpu")
GPU_WORKER_PREFIX = "mlp:workers:gpu:"
RECOVER_LOCK = "mlp:recover:lock"
# a message may wait in the broker for as long as the longest job runs, and more
VISIBILITY_MARGIN_S = 3600


def celery_url(redis_url: str) -> str:
    """Celery/kombu spell a unix-socket Redis `redis+socket:///path?virtual_host=N`."""
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


def make_celery(redis_url: str, *, include: Iterable[str] = (),
                max_runtime_s: float = 86_400.0, name: str = "mlp") -> Celery:
    """A Celery app with the shared configuration (see the module docstring)."""
    url = celery_url(redis_url)
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
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    app.conf.mlp_redis_url = redis_url
    return app


def enqueue_job(celery: Celery, job_id: str, queue: str, *,
                redis: redis_lib.Redis | None = None) -> None:
    """Send `worker.tasks.train_job(job_id)` to `queue` ("cpu" or "gpu").

    Also sets `mlp:jobs:<id>:queued`, so that recover_jobs can tell a message that waits
    in the broker from one that Redis has lost.
    """
    if queue not in QUEUES:
        raise ValueError(f"queue must be one of {QUEUES}, not {queue!r}")
    own = redis is None
    if redis is None:
        redis = redis_from_url(celery.conf.mlp_redis_url)
    try:
        ttl = int(celery.conf.broker_transport_options.get("visibility_timeout", 90_000))
        redis.set(queued_key(job_id), queue, ex=ttl)
        celery.send_task(TRAIN_TASK, args=[job_id], queue=queue, routing_key=queue)
    finally:
        if own:
            redis.close()


def gpu_worker_key(worker_id: str) -> str:
    return GPU_WORKER_PREFIX + worker_id


def gpu_worker_alive(redis: redis_lib.Redis) -> bool:
    """Whether some GPU worker has announced itself recently (a key with a TTL)."""
    for _ in redis.scan_iter(match=GPU_WORKER_PREFIX + "*", count=100):
        return True
    return False


def queue_for_device(device: str, redis: redis_lib.Redis | None = None) -> str:
    """cuda → gpu; cpu → cpu; auto → gpu when a GPU worker is alive, else cpu."""
    if device == "cuda":
        return "gpu"
    if device == "auto" and redis is not None:
        try:
            return "gpu" if gpu_worker_alive(redis) else "cpu"
        except redis_lib.RedisError:
            return "cpu"
    return "cpu"


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
                from .jobs import finish_job

                if finish_job(session, job.id, JobStatus.CANCELLED):
                    counts["cancelled"] += 1
                    session.refresh(job)
                    publish_status(redis, job)
                continue
            if redis.exists(queued_key(job.id)):
                continue  # a message is waiting in the broker
            log.info("re-queueing %s job %s on %s", job.status, job.id, job.queue)
            enqueue_job(celery, job.id, job.queue if job.queue in QUEUES else "cpu",
                        redis=redis)
            job.enqueued_at = now
            session.commit()
            counts["requeued"] += 1
    return counts


def describe(app: Celery) -> dict[str, Any]:
    """The settings that matter, for logs and tests."""
    keys = ("task_acks_late", "worker_prefetch_multiplier", "task_create_missing_queues",
            "task_default_queue", "broker_transport_options", "task_reject_on_worker_lost")
    return {k: app.conf.get(k) for k in keys}
