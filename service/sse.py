"""Server-Sent Events for one job: `status` (the job), `metrics` (one epoch record each,
with `id: <epoch>`), then one `end` event once the job is terminal.

The stream subscribes to the job's Redis channel *before* it reads the database, so an
event published in between is not missed; it then sends the job and the epochs recorded
so far, then live events, dropping epochs it has already sent. It also polls the database
every `poll_s` seconds, so a pub/sub message that never arrives (Redis restarted, a
publisher that died) delays the stream by a second instead of hanging it. A comment line
every `heartbeat_s` keeps proxies from closing an idle connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import redis
import redis.asyncio as aredis
from sqlalchemy.orm import Session

from messaging.live_events import decode_event, events_channel
from store.jobs import get_job, get_metrics
from store.status import TERMINAL

from .schemas import JobPublic

__all__ = ["job_event_stream", "format_event"]

log = logging.getLogger(__name__)


def format_event(event: str, data: Any, *, event_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), allow_nan=False))
    return ("\n".join(lines) + "\n\n").encode()


def _snapshot(session_factory: Callable[[], Session], job_id: str,
              since: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    with session_factory() as session:
        job = get_job(session, job_id)
        if job is None:
            return None, []
        return (JobPublic.from_row(job).model_dump(mode="json"),
                get_metrics(session, job_id, since=since))


async def job_event_stream(*, job_id: str, session_factory: Callable[[], Session],
                           client: aredis.Redis, poll_s: float = 1.0,
                           heartbeat_s: float = 15.0,
                           last_epoch: int = 0) -> AsyncIterator[bytes]:
    """The SSE byte stream of one job (see the module docstring). `last_epoch` skips the
    epochs a reconnecting client has (its Last-Event-ID)."""
    pubsub = None
    try:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(events_channel(job_id))
    except (redis.RedisError, OSError) as exc:
        log.warning("events of %s: Redis does not answer, polling the database only: %s",
                    job_id, exc)
        pubsub = None

    sent_epoch = last_epoch
    last_status: str | None = None
    last_sent = time.monotonic()

    async def from_database() -> tuple[list[bytes], bool]:
        """New epochs and a changed status from the database; (events, terminal)."""
        nonlocal sent_epoch, last_status
        job, records = await anyio.to_thread.run_sync(_snapshot, session_factory, job_id,
                                                      sent_epoch)
        if job is None:  # deleted while we stream
            return [format_event("end", {"id": job_id, "status": "deleted"})], True
        out = []
        for record in records:
            epoch = int(record.get("epoch", 0))
            if epoch > sent_epoch:
                out.append(format_event("metrics", record, event_id=epoch))
                sent_epoch = epoch
        if job["status"] != last_status:
            out.append(format_event("status", job))
            last_status = job["status"]
        terminal = job["status"] in TERMINAL
        if terminal:
            out.append(format_event("end", {"id": job_id, "status": job["status"]}))
        return out, terminal

    try:
        events, done = await from_database()
        for chunk in events:
            yield chunk
        last_sent = time.monotonic()
        if done:
            return
        next_poll = time.monotonic() + poll_s
        while True:
            timeout = max(0.0, next_poll - time.monotonic())
            message = None
            if pubsub is not None:
                try:
                    message = await pubsub.get_message(timeout=timeout)
                except (redis.RedisError, OSError) as exc:
                    log.warning("events of %s: lost Redis, polling the database only: %s",
                                job_id, exc)
                    await _close(pubsub)
                    pubsub = None
            else:
                await asyncio.sleep(timeout)
            out: list[bytes] = []
            terminal = False
            if message is not None and message.get("type") == "message":
                try:
                    event = decode_event(message["data"])
                except (ValueError, TypeError):
                    event = {}
                kind, data = event.get("type"), event.get("data")
                if kind == "metrics" and isinstance(data, dict):
                    epoch = int(data.get("epoch", 0))
                    if epoch == sent_epoch + 1:
                        out.append(format_event("metrics", data, event_id=epoch))
                        sent_epoch = epoch
                    elif epoch > sent_epoch:  # a gap: fill it from the database
                        next_poll = 0.0
                elif kind == "status" and isinstance(data, dict):
                    # the database has the last word on the state; read it now
                    next_poll = 0.0
            if time.monotonic() >= next_poll:
                events, terminal = await from_database()
                out.extend(events)
                next_poll = time.monotonic() + poll_s
            for chunk in out:
                yield chunk
            if out:
                last_sent = time.monotonic()
            if terminal:
                return
            if time.monotonic() - last_sent >= heartbeat_s:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
    finally:
        if pubsub is not None:
            await _close(pubsub)


async def _close(pubsub: Any) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await pubsub.unsubscribe()
            await pubsub.aclose()
        except Exception:  # closing a dead connection may fail; nothing to do about it
            pass
