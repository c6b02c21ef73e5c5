"""Sending a job to its queue, and which queue that is (cpu or gpu, by the job's device and
the GPU workers alive).

Fairness between tenants: a job's message carries a priority from the number of the same
tenant's jobs queued or running ahead of it (`fair_priority`: 0, 1, 2-3, 4-7, ... ahead →
levels 0, 1, 2, 3, ...). A tenant's first job goes ahead of another tenant's tenth, so one
tenant's hundred queued jobs cannot hold the queue; the workers take level 0 first, and
within a level, the oldest message.
"""

from __future__ import annotations

import redis as redis_lib
from celery import Celery

from .celery_factory import PRIORITY_LEVELS, QUEUES, TRAIN_TASK
from .live_events import queued_key
from .redis_url import redis_from_url

__all__ = ["enqueue_job", "fair_priority", "queue_for_device", "gpu_worker_alive", "gpu_worker_key",
           "gpu_worker_known_absent"]

GPU_WORKER_PREFIX = "mlp:workers:gpu:"


def fair_priority(ahead: int) -> int:
    """The priority level of a tenant's job with `ahead` of its jobs queued or running
    before it: 0 → 0, 1 → 1, 2-3 → 2, 4-7 → 3, ..., capped at the last level."""
    return min(PRIORITY_LEVELS - 1, max(0, ahead).bit_length())


def enqueue_job(celery: Celery, job_id: str, queue: str, *,
                redis: redis_lib.Redis | None = None, priority: int = 0) -> None:
    """Send `worker.tasks.train_job(job_id)` to `queue` ("cpu" or "gpu") at `priority`
    (0 first; see fair_priority).

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
        # ignore_result: nobody reads task results (the database holds every outcome);
        # without it send_task subscribes this process to each job's result channel
        celery.send_task(TRAIN_TASK, args=[job_id], queue=queue, routing_key=queue,
                         priority=min(max(0, priority), PRIORITY_LEVELS - 1),
                         ignore_result=True)
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


def gpu_worker_known_absent(redis: redis_lib.Redis | None) -> bool:
    """True only when Redis answers and no GPU worker has announced itself: a `cuda` job
    would then wait forever. Unknown (no Redis) is not absent: the job is stored and the
    enqueue reports Redis."""
    if redis is None:
        return False
    try:
        return not gpu_worker_alive(redis)
    except redis_lib.RedisError:
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
