"""Live streams of one job: Server-Sent Events (`job_event_stream`) and the follow mode of
its log (`job_log_stream`), both bounded by `StreamSlots` and reading the database on the
streams' own threads.

The events: `status` (the job), `metrics` (one epoch record each, with `id: <epoch>`),
`finding` (one per finding of SPEC 8, read from the job row), then one `end` event once the
job is terminal.

The stream subscribes to the job's Redis channel *before* it reads the database, so an
event published in between is not missed; it then sends the job and the epochs recorded
so far, then live events, dropping epochs it has already sent. It also polls the database
every `poll_s` seconds, so a pub/sub message that never arrives (Redis restarted, a
publisher that died) delays the stream by a second instead of hanging it. A comment line
every `heartbeat_s` keeps proxies from closing an idle connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import redis
import redis.asyncio as aredis
from sqlalchemy.orm import Session

from messaging.live_events import decode_event, events_channel
from store.jobs import get_job, get_metrics
from store.logs import get_log_lines
from store.status import TERMINAL
from store.timefmt import rfc3339

from .errors import TooManyRequests
from .schemas import JobPublic

__all__ = ["job_event_stream", "format_event", "StreamSlots", "StreamSlot", "stream_owner",
           "job_log_stream", "format_log_line"]

log = logging.getLogger(__name__)


class StreamSlot:
    """One open stream's place in `StreamSlots`; `release()` may be called any number of
    times (by the stream's end, and by the response's end in case the stream never ran)."""

    def __init__(self, slots: StreamSlots, owner: str) -> None:
        self._slots, self._owner, self._held = slots, owner, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._owner)


class StreamSlots:
    """Bounds the event streams one process serves: `per_owner` for one API key and `total`
    for all (SPEC 7); a stream over either bound is refused with 429 before it starts.

    Streams also read the database through their own `db_limiter` (a few threads), so that
    however many are open they never take the threads and connections requests need."""

    def __init__(self, *, per_owner: int, total: int, db_threads: int) -> None:
        self.per_owner, self.total = per_owner, total
        self.db_threads = db_threads
        self._open: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def db_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # made in the event loop that uses it
            self._limiter = anyio.CapacityLimiter(self.db_threads)
        return self._limiter

    def acquire(self, owner: str) -> StreamSlot:
        with self._lock:
            if self._count >= self.total:
                raise TooManyRequests(
                    f"this service already serves {self._count} event streams, the limit "
                    f"max_streams={self.total} (MLP_MAX_STREAMS); poll GET /v1/jobs/{{id}} "
                    "or retry later", retry_after=5)
            mine = self._open.get(owner, 0)
            if mine >= self.per_owner:
                raise TooManyRequests(
                    f"this API key has {mine} event streams open, the limit "
                    f"max_streams_per_key={self.per_owner} (MLP_MAX_STREAMS_PER_KEY); close "
                    "one first", retry_after=5)
            self._open[owner] = mine + 1
            self._count += 1
        return StreamSlot(self, owner)

    def _release(self, owner: str) -> None:
        with self._lock:
            self._count -= 1
            left = self._open.get(owner, 1) - 1
            if left > 0:
                self._open[owner] = left
            else:
                self._open.pop(owner, None)

    def open_streams(self) -> int:
        return self._count


def stream_owner(request: Any, tenant_id: str) -> str:
    """Whom a stream counts against: the API key (as a digest, never the key itself), or
    the tenant when auth is off."""
    header = request.headers.get("authorization") or ""
    if not header:
        return f"tenant:{tenant_id}"
    return "key:" + hashlib.sha256(header.encode()).hexdigest()[:32]


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
                           heartbeat_s: float = 15.0, last_epoch: int = 0,
                           slot: StreamSlot | None = None,
                           db_limiter: anyio.CapacityLimiter | None = None
                           ) -> AsyncIterator[bytes]:
    """The SSE byte stream of one job (see the module docstring). `last_epoch` skips the
    epochs a reconnecting client has (its Last-Event-ID); `slot` is released when the
    stream ends; database reads run on `db_limiter`'s threads."""
    try:
        async for chunk in _job_events(job_id=job_id, session_factory=session_factory,
                                       client=client, poll_s=poll_s, heartbeat_s=heartbeat_s,
                                       last_epoch=last_epoch, db_limiter=db_limiter):
            yield chunk
    finally:
        if slot is not None:
            slot.release()


async def _job_events(*, job_id: str, session_factory: Callable[[], Session],
                      client: aredis.Redis, poll_s: float, heartbeat_s: float,
                      last_epoch: int, db_limiter: anyio.CapacityLimiter | None
                      ) -> AsyncIterator[bytes]:
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
    # findings are sent once each (by rule and layer); a reconnecting client (Last-Event-ID)
    # has those of the epochs it saw, and the ones from before training
    sent_findings: set[tuple[Any, Any]] = set()
    last_sent = time.monotonic()

    async def from_database() -> tuple[list[bytes], bool]:
        """New epochs and a changed status from the database; (events, terminal)."""
        nonlocal sent_epoch, last_status
        job, records = await anyio.to_thread.run_sync(_snapshot, session_factory, job_id,
                                                      sent_epoch, limiter=db_limiter)
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
        for finding in job.get("findings") or ():
            key = (finding.get("rule"), finding.get("layer"))
            if key in sent_findings:
                continue
            sent_findings.add(key)
            seen_before = last_epoch > 0 and (finding.get("epoch") or 0) <= last_epoch
            if not seen_before:
                out.append(format_event("finding", finding))
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
                elif kind in ("status", "finding") and isinstance(data, dict):
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


# --------------------------------------------------------------------------- log follow

LOG_BATCH = 1000  # lines one database read of a follow stream takes at most


def format_log_line(line: Any) -> str:
    """`2026-11-29T17:00:00.123Z INFO epoch 3/30 train_loss=0.41 ...` and a newline."""
    return f"{rfc3339(line.created_at)} {line.level} {line.message}\n"


def _log_snapshot(session_factory: Callable[[], Session], job_id: str, since: int,
                  limit: int) -> tuple[str | None, int, str]:
    """(the job's status or None when it is gone, the last line number read, the text of
    the lines after `since`). The status is read first: once it is terminal, every line the
    worker wrote (it writes them before it finishes the job) is among those read after."""
    with session_factory() as session:
        job = get_job(session, job_id)
        if job is None:
            return None, since, ""
        status = job.status
        lines = get_log_lines(session, job_id, since=since, limit=limit)
        last = lines[-1].line_no if lines else since
        return status, last, "".join(format_log_line(line) for line in lines)


async def job_log_stream(*, job_id: str, session_factory: Callable[[], Session],
                         since: int = 0, poll_s: float = 1.0, slot: StreamSlot | None = None,
                         db_limiter: anyio.CapacityLimiter | None = None,
                         batch: int = LOG_BATCH) -> AsyncIterator[bytes]:
    """The job's log lines after line `since` as text, then new ones as they are written
    (read every `poll_s` seconds on `db_limiter`'s threads), until the job is terminal and
    every line is sent, or it is deleted. `slot` is released when the stream ends."""
    try:
        last = since
        while True:
            before = last
            status, last, text = await anyio.to_thread.run_sync(
                _log_snapshot, session_factory, job_id, last, batch, limiter=db_limiter)
            if text:
                yield text.encode()
            more = last - before >= batch  # numbers have no gaps: a full batch, read on
            if status is None or (status in TERMINAL and not more):
                return
            if not more:
                await asyncio.sleep(poll_s)
    finally:
        if slot is not None:
            slot.release()
