"""The live channel on Redis: job events for the SSE stream, and cancel flags.

Redis only carries messages; the database stays the source of truth, so a lost event is
never lost data (a late SSE client reads the epochs so far from the database first).

- channel `mlp:jobs:<job_id>:events`: JSON `{"type": "status", "data": {"id", "status"}}` on
  every status change, `{"type": "metrics", "data": <epoch record with "epoch">}` per epoch.
- key `mlp:jobs:<job_id>:cancel`: set when a cancel is requested; the worker polls it.
- key `mlp:jobs:<job_id>:queued`: set while a message for the job waits in the broker.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis as redis_lib

# a client for any REDIS_URL form; made in messaging.redis_url, and imported from here too
from .redis_url import redis_from_url

__all__ = [
    "events_channel",
    "cancel_key",
    "queued_key",
    "encode_event",
    "decode_event",
    "publish_event",
    "publish_status",
    "set_cancel_flag",
    "cancel_requested",
    "clear_cancel_flag",
    "redis_from_url",
]

log = logging.getLogger(__name__)

CANCEL_FLAG_TTL_S = 7 * 86_400


def events_channel(job_id: str) -> str:
    return f"mlp:jobs:{job_id}:events"


def cancel_key(job_id: str) -> str:
    return f"mlp:jobs:{job_id}:cancel"


def queued_key(job_id: str) -> str:
    return f"mlp:jobs:{job_id}:queued"


def encode_event(type_: str, data: Any) -> str:
    return json.dumps({"type": type_, "data": data}, separators=(",", ":"), allow_nan=False)


def decode_event(message: bytes | str) -> dict[str, Any]:
    return json.loads(message)


def publish_event(redis: redis_lib.Redis, job_id: str, type_: str, data: Any) -> bool:
    """Publish one event; False (logged, not raised) when Redis is away."""
    try:
        redis.publish(events_channel(job_id), encode_event(type_, data))
        return True
    except redis_lib.RedisError as exc:
        log.warning("could not publish %s event of %s: %s", type_, job_id, exc)
        return False


def publish_status(redis: redis_lib.Redis, job: Any) -> bool:
    """Publish a `status` event with the job's id and new status. A stream that receives it
    reads the job from the database, which has the last word, and sends the whole job."""
    return publish_event(redis, job.id, "status", {"id": job.id, "status": str(job.status)})


def set_cancel_flag(redis: redis_lib.Redis, job_id: str, *, ttl_s: int = CANCEL_FLAG_TTL_S) -> None:
    redis.set(cancel_key(job_id), "1", ex=ttl_s)


def clear_cancel_flag(redis: redis_lib.Redis, job_id: str) -> None:
    redis.delete(cancel_key(job_id))


def cancel_requested(redis: redis_lib.Redis, job_id: str) -> bool:
    return bool(redis.exists(cancel_key(job_id)))
