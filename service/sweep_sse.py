"""The live stream of one sweep (`GET /v1/sweeps/{id}/events`), modelled on service.sse's
job stream: the database is the truth, a Redis message on the sweep's channel only says
"look now", and the database is polled every `poll_s` anyway. Bounded by StreamSlots.

Events: `sweep` (the sweep object, first and whenever its status changes),
`trial_started` (a trial was made; data: its leaderboard row), `trial_finished` or
`trial_pruned` (it ended), `best` (a new best trial), then one `end` event once the sweep
has ended. A client that connects late first gets what happened so far, in trial order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import redis
import redis.asyncio as aredis
from sqlalchemy.orm import Session

from messaging.sweeps import sweep_channel
from store.status import SWEEP_TERMINAL, TERMINAL, JobStatus
from store.sweeps import get_sweep

from .sse import StreamSlot, _close, format_event

__all__ = ["sweep_event_stream", "sweep_snapshot"]

log = logging.getLogger(__name__)

Snapshot = Callable[[Session, Any], tuple[dict[str, Any], list[dict[str, Any]]]]


def sweep_snapshot(session_factory: Callable[[], Session], sweep_id: str, public: Snapshot
                   ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the sweep object or None when deleted, its trials as leaderboard rows in trial
    order); `public(session, sweep)` makes both (the route's serialisation)."""
    with session_factory() as session:
        sweep = get_sweep(session, sweep_id)
        if sweep is None:
            return None, []
        return public(session, sweep)


async def sweep_event_stream(*, sweep_id: str, session_factory: Callable[[], Session],
                             public: Snapshot, client: aredis.Redis, poll_s: float = 1.0,
                             heartbeat_s: float = 15.0, slot: StreamSlot | None = None,
                             db_limiter: anyio.CapacityLimiter | None = None
                             ) -> AsyncIterator[bytes]:
    try:
        async for chunk in _events(sweep_id=sweep_id, session_factory=session_factory,
                                   public=public, client=client, poll_s=poll_s,
                                   heartbeat_s=heartbeat_s, db_limiter=db_limiter):
            yield chunk
    finally:
        if slot is not None:
            slot.release()


async def _events(*, sweep_id: str, session_factory: Callable[[], Session], public: Snapshot,
                  client: aredis.Redis, poll_s: float, heartbeat_s: float,
                  db_limiter: anyio.CapacityLimiter | None) -> AsyncIterator[bytes]:
    pubsub = None
    try:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(sweep_channel(sweep_id))
    except (redis.RedisError, OSError) as exc:
        log.warning("events of sweep %s: Redis does not answer, polling only: %s",
                    sweep_id, exc)
        pubsub = None

    seen: dict[int, str] = {}  # trial -> the status last sent
    last_status: str | None = None
    last_best: tuple[Any, Any] | None = None

    async def from_database() -> tuple[list[bytes], bool]:
        nonlocal last_status, last_best
        sweep, trials = await anyio.to_thread.run_sync(
            sweep_snapshot, session_factory, sweep_id, public, limiter=db_limiter)
        if sweep is None:
            return [format_event("end", {"id": sweep_id, "status": "deleted"})], True
        out = []
        if sweep["status"] != last_status:
            out.append(format_event("sweep", sweep))
            last_status = sweep["status"]
        for row in trials:
            number, status = int(row["trial"]), str(row["status"])
            if number not in seen:
                out.append(format_event("trial_started", row))
                seen[number] = JobStatus.QUEUED
            if status in TERMINAL and seen[number] not in TERMINAL:
                kind = "trial_pruned" if status == JobStatus.PRUNED else "trial_finished"
                out.append(format_event(kind, row))
            seen[number] = status
        best = sweep.get("best")
        key = (best.get("job_id"), best.get("objective")) if best else None
        if key is not None and key != last_best:
            out.append(format_event("best", best))
            last_best = key
        terminal = sweep["status"] in SWEEP_TERMINAL
        if terminal:
            out.append(format_event("end", {"id": sweep_id, "status": sweep["status"]}))
        return out, terminal

    last_sent = time.monotonic()
    try:
        events, done = await from_database()
        for chunk in events:
            yield chunk
        if done:
            return
        next_poll = time.monotonic() + poll_s
        while True:
            timeout = max(0.0, next_poll - time.monotonic())
            if pubsub is not None:
                try:
                    message = await pubsub.get_message(timeout=timeout)
                except (redis.RedisError, OSError) as exc:
                    log.warning("events of sweep %s: lost Redis, polling only: %s",
                                sweep_id, exc)
                    await _close(pubsub)
                    pubsub, message = None, None
                if message is not None and message.get("type") == "message":
                    next_poll = 0.0  # a hint: read the database now
            else:
                await asyncio.sleep(timeout)
            if time.monotonic() < next_poll:
                if time.monotonic() - last_sent >= heartbeat_s:
                    yield b": keep-alive\n\n"
                    last_sent = time.monotonic()
                continue
            events, done = await from_database()
            next_poll = time.monotonic() + poll_s
            for chunk in events:
                yield chunk
            if events:
                last_sent = time.monotonic()
            if done:
                return
            if time.monotonic() - last_sent >= heartbeat_s:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
    finally:
        if pubsub is not None:
            await _close(pubsub)
