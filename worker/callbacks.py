"""The callbacks through which a training run reports to the outside world, each with one
job; worker.runner.job_callbacks composes them, in this order, for every attempt:

1. `CheckpointWriter`  writes a checkpoint when one is due and names it in the job row, with
                       the epoch records up to it, in one lease-fenced transaction;
2. `MetricsRecorder`   writes the other epoch records in batches (at most one write per
                       `flush_s`, and at the end);
3. `EventPublisher`    publishes each epoch's metrics on Redis;
4. `StopWatcher`       stops training, cheaply at batch ends, when the job was cancelled or
                       its lease lost.

Before them all, `mlp_engine.rule_monitor.RuleMonitor` (the findings rules of SPEC 8) takes
out of each record the diagnostics it asked for on its own, and hands each finding to a
`FindingWriter`, which stores it at once.

The order is SPEC 7's promise: an epoch's metrics are recorded and published only after its
checkpoint (when one is due) is written, so a job's progress never goes backwards. The two
writers share one `JobLedger`: what this attempt has written to the job row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis as redis_lib
from sqlalchemy.orm import Session

from messaging.live_events import cancel_requested, encode_event, events_channel
from mlp_engine.callbacks import Callback, TrainState
from mlp_engine.errors import Cancelled
from store.artifacts import ArtifactError, ArtifactStore
from store.findings import add_findings
from store.jobs import json_safe, record_epochs

from .checkpoints import checkpoint_key, encode_checkpoint
from .errors import LeaseLost
from .lease import Heartbeat, TrialLease

if TYPE_CHECKING:  # pragma: no cover
    from .job_log import JobLog
    from .pack_book import PackBook

__all__ = ["FindingWriter", "JobLedger", "CheckpointWriter", "MetricsRecorder", "EventPublisher",
           "StopWatcher", "Heartbeat", "LeaseLost", "checkpoint_key"]

log = logging.getLogger(__name__)


@dataclass
class FindingWriter:
    """The sink of the job's `mlp_engine.rule_monitor.RuleMonitor`: stores each finding on
    the job row as it is found (lease-fenced: raises LeaseLost once another worker holds
    the job), publishes a `finding` event and says it in the job's log."""

    job_id: str
    session_factory: Callable[[], Session]
    redis: redis_lib.Redis | None = None
    worker_id: str | None = None
    log: logging.Logger | JobLog | None = None  # where the job's own lines go

    def __call__(self, finding: dict[str, Any]) -> None:
        with self.session_factory() as session:
            added = add_findings(session, self.job_id, [finding], worker_id=self.worker_id)
        if added is None:
            raise LeaseLost(f"job {self.job_id} is no longer held by {self.worker_id}; its "
                            "finding was not recorded")
        for f in added:
            if self.log is not None:
                where = f" at {f['layer']}" if f.get("layer") else ""
                when = f"epoch {f['epoch']}" if f.get("epoch") is not None else "start"
                self.log.warning("finding (%s, %s%s): %s: %s", f["severity"], when, where,
                                 f["rule"], f["message"])
            if self.redis is not None:
                try:
                    self.redis.publish(events_channel(self.job_id), encode_event("finding", f))
                except redis_lib.RedisError as exc:  # the database has it; streams poll
                    log.warning("job %s: could not publish a finding event: %s",
                                self.job_id, exc)


@dataclass
class JobLedger:
    """What this attempt has written to the job row: the epoch records up to
    `recorded_through` and the checkpoint the row names.

    The records still to write are those of `state.history` past `recorded_through` (an
    earlier attempt's are in the database already). With a `worker_id`, every write is fenced
    by the lease (store.jobs.record_epochs) and raises LeaseLost once another worker holds
    the job.
    """

    job_id: str
    session_factory: Callable[[], Session]
    worker_id: str | None = None
    recorded_through: int = 0
    checkpoint: str | None = None
    last_write: float = field(default_factory=time.monotonic)

    def write(self, history: Sequence[dict[str, Any]], *,
              checkpoint: tuple[str, int] | None = None) -> None:
        """Write the unwritten records (and a new checkpoint's key) in one transaction."""
        records = self.unwritten(history)
        if not records and checkpoint is None:
            return
        uri, epoch = checkpoint if checkpoint else (None, None)
        with self.session_factory() as session:
            held = record_epochs(session, self.job_id, records, checkpoint_uri=uri,
                                 checkpoint_epoch=epoch, worker_id=self.worker_id)
        if self.worker_id is not None and not held:
            raise LeaseLost(f"job {self.job_id} is no longer held by {self.worker_id}; "
                            "nothing of this attempt was recorded after its lease lapsed")
        self.wrote(records)
        if uri is not None:
            self.checkpoint = uri

    def unwritten(self, history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of `history` this ledger has not written."""
        return [r for r in history if int(r["epoch"]) > self.recorded_through]

    def wrote(self, records: Sequence[dict[str, Any]]) -> None:
        """`records` are in the database now (written here, or by worker.pack_book)."""
        if records:
            self.recorded_through = max(self.recorded_through,
                                        max(int(r["epoch"]) for r in records))
        self.last_write = time.monotonic()


class CheckpointWriter(Callback):
    """Writes a checkpoint every `every` epochs (or, without it, after an epoch at most once
    per `interval_s`), names it in the job row and deletes the one it replaces.

    Runs first at an epoch's end: the epoch's record goes into the database with its
    checkpoint, never before it.
    """

    def __init__(self, ledger: JobLedger, *, artifacts: ArtifactStore, attempt: int,
                 every: int | None = None, interval_s: float = 5.0) -> None:
        self.ledger = ledger
        self.artifacts = artifacts
        self.attempt = attempt
        self.every = every
        self.interval_s = interval_s
        self.written = 0
        self._last = time.monotonic()

    def on_train_begin(self, state: TrainState) -> None:
        self._last = time.monotonic()

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        if self._due(epoch):
            self._write(state, epoch)

    def _due(self, epoch: int) -> bool:
        if self.every is not None:
            return epoch % self.every == 0
        return time.monotonic() - self._last >= self.interval_s

    def _write(self, state: TrainState, epoch: int) -> None:
        key = checkpoint_key(self.ledger.job_id, attempt=self.attempt, epoch=epoch)
        self.artifacts.put_bytes(key, encode_checkpoint(state.checkpoint()))
        previous = self.ledger.checkpoint
        try:
            self.ledger.write(state.history, checkpoint=(key, epoch))
        except LeaseLost:
            self._delete(key)  # never named by the job row
            raise
        if previous and previous != key:
            self._delete(previous)
        self.written += 1
        self._last = time.monotonic()

    def _delete(self, key: str) -> None:
        try:
            self.artifacts.delete(key)
        except (ArtifactError, OSError) as exc:
            # a leftover file costs disk, never correctness: the job row names another
            log.warning("could not delete checkpoint %s: %s", key, exc)


class MetricsRecorder(Callback):
    """Writes the epoch records CheckpointWriter did not, in batches: at most one write per
    `flush_s`, and whatever is left when training ends, however it ends (but a lost lease:
    the job is another worker's then).

    With `book` (a trial of a pack, worker.pack_book) the book writes them, for all the
    pack's trials in one transaction: at most once per its flush interval, and what is
    left once the pack has trained (worker.packs), before any trial's end."""

    def __init__(self, ledger: JobLedger, *, flush_s: float = 1.0,
                 book: PackBook | None = None) -> None:
        self.ledger = ledger
        self.flush_s = flush_s
        self.book = book

    def on_train_begin(self, state: TrainState) -> None:
        if self.book is not None:
            self.book.note(self.ledger.job_id, state.history)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.book is not None:
            self.book.note(self.ledger.job_id, state.history)
            self.book.maybe_flush()
            if self.book.lost(self.ledger.job_id):
                raise LeaseLost(f"job {self.ledger.job_id} is no longer held by "
                                f"{self.ledger.worker_id}; nothing of this attempt was "
                                "recorded after its lease lapsed")
        elif time.monotonic() - self.ledger.last_write >= self.flush_s:
            self.ledger.write(state.history)

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        if self.book is None and not isinstance(error, LeaseLost):
            self.ledger.write(state.history)


class _RedisOutage:
    """Redis trouble of one callback of one job: logged once, and no call to Redis for
    `pause_s` after a failure, so that an unreachable server (each call waiting out its
    timeouts) does not slow training down."""

    def __init__(self, job_id: str, what: str, *, pause_s: float = 5.0) -> None:
        self.job_id = job_id
        self.what = what
        self.pause_s = pause_s
        self.warned = False
        self._until = 0.0

    def paused(self) -> bool:
        return time.monotonic() < self._until

    def __call__(self, exc: redis_lib.RedisError) -> None:
        self._until = time.monotonic() + self.pause_s
        if not self.warned:
            log.warning("Redis is unavailable for job %s (%s); %s", self.job_id, exc,
                        self.what)
            self.warned = True


class EventPublisher(Callback):
    """Publishes a `metrics` event per epoch on the job's Redis channel, batched in one
    round trip per `interval_s`. Epochs up to `after_epoch` were published by an earlier
    attempt. Redis being away loses only these events; the database has every epoch. One
    round trip per 250 ms keeps short epochs cheap (every 50 ms, publishing took 4% of a
    1000-epoch iris job) while a follower still sees each epoch within a quarter second."""

    def __init__(self, redis: redis_lib.Redis | None, *, job_id: str, after_epoch: int = 0,
                 interval_s: float = 0.25) -> None:
        self.redis = redis
        self.job_id = job_id
        self.after_epoch = after_epoch
        self.interval_s = interval_s
        self.events: list[str] = []
        self._last = time.monotonic()
        self._outage = _RedisOutage(job_id, "metric events are dropped, the database "
                                            "keeps every epoch")

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if int(record["epoch"]) > self.after_epoch:
            self.events.append(encode_event("metrics", json_safe(record)))
        if time.monotonic() - self._last >= self.interval_s:
            self.publish()

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        if not isinstance(error, LeaseLost):
            self.publish()

    def publish(self) -> None:
        self._last = time.monotonic()
        events, self.events = self.events, []
        if not events or self.redis is None or self._outage.paused():
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            channel = events_channel(self.job_id)
            for event in events:
                pipe.publish(channel, event)
            pipe.execute()
        except redis_lib.RedisError as exc:
            self._outage(exc)


class StopWatcher(Callback):
    """Stops training when the job was cancelled (the Redis flag, polled at most every
    `poll_s`, or the heartbeat's view of the database) or its lease lost (the heartbeat).
    Runs last at an epoch's end, so a finished epoch is recorded even when training stops
    after it."""

    def __init__(self, redis: redis_lib.Redis | None, *, job_id: str,
                 heartbeat: Heartbeat | TrialLease | None = None, poll_s: float = 0.2) -> None:
        self.redis = redis
        self.job_id = job_id
        self.heartbeat = heartbeat
        self.poll_s = poll_s
        self._last_poll = time.monotonic()
        self._outage = _RedisOutage(job_id, "a cancel is seen through the database instead")

    def on_train_begin(self, state: TrainState) -> None:
        self._check(force_poll=True)

    def on_batch_end(self, state: TrainState) -> None:
        self._check()

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        self._check()

    def _check(self, *, force_poll: bool = False) -> None:
        hb = self.heartbeat
        if hb is not None:
            if hb.lease_lost:
                raise LeaseLost(f"job {self.job_id} was taken over by another worker")
            if hb.cancel_requested:
                raise Cancelled(f"job {self.job_id} was cancelled")
        if self.redis is None or self._outage.paused():
            return
        now = time.monotonic()
        if not force_poll and now - self._last_poll < self.poll_s:
            return
        self._last_poll = now
        try:
            cancelled = cancel_requested(self.redis, self.job_id)
        except redis_lib.RedisError as exc:
            self._outage(exc)
            return
        if cancelled:
            raise Cancelled(f"job {self.job_id} was cancelled")
