"""The callbacks through which a training run reports to the outside world.

`JobReporter` is the one callback the worker hands to `fit`: per epoch it writes the
checkpoint when one is due, records metrics in the database (batched: at most one write
per `flush_s`, and at every checkpoint and at the end) and publishes them on Redis; per
batch it checks, cheaply, whether the job was cancelled or its lease lost. `Heartbeat` is
a thread that renews the job's lease and reads its status from the database.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis as redis_lib
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from messaging.live_events import cancel_key, encode_event, events_channel
from mlp_engine.callbacks import Callback, TrainState
from mlp_engine.errors import Cancelled
from store.artifacts import ArtifactStore
from store.jobs import json_safe, record_epochs, renew_lease

__all__ = ["JobReporter", "Heartbeat", "LeaseLost", "checkpoint_key"]

log = logging.getLogger(__name__)


class LeaseLost(Cancelled):
    """Another worker took the job over (this one's lease expired): stop, write nothing."""


def checkpoint_key(job_id: str, *, attempt: int = 0, epoch: int = 0) -> str:
    """Where a checkpoint goes. A file is never overwritten: the job row names the one to
    resume from, and a worker that lost its lease (but has not noticed yet) must not
    change that file under the worker that took the job over."""
    return f"jobs/{job_id}/checkpoint-a{attempt}-e{epoch}.pt"


class Heartbeat(threading.Thread):
    """Renews the job's lease every `interval_s` and notes a cancel or a lost lease.

    A thread, so that a slow batch or a long evaluation never lets the lease lapse; the
    training loop reads its two flags at batch boundaries.
    """

    def __init__(self, *, session_factory: Callable[[], Session], job_id: str,
                 worker_id: str, lease_s: float, interval_s: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.session_factory = session_factory
        self.job_id = job_id
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.cancel_requested = False
        self.lease_lost = False
        self._stop_event = threading.Event()

    def beat(self) -> None:
        try:
            with self.session_factory() as session:
                status = renew_lease(session, self.job_id, worker_id=self.worker_id,
                                     lease_s=self.lease_s)
        except SQLAlchemyError as exc:
            # the lease outlives a short database outage; try again next beat
            log.warning("could not renew the lease of %s: %s", self.job_id, exc)
            return
        if status is None:
            self.lease_lost = True
        elif status == "cancelling":
            self.cancel_requested = True

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.beat()
            if self.lease_lost:
                return

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=30)


class JobReporter(Callback):
    """Checkpoints, metrics (database and Redis), cancellation and the lease, for one job."""

    def __init__(
        self,
        *,
        job_id: str,
        session_factory: Callable[[], Session],
        redis: redis_lib.Redis | None,
        artifacts: ArtifactStore,
        heartbeat: Heartbeat | None = None,
        checkpoint_every: int | None = None,
        checkpoint_interval_s: float = 5.0,
        flush_s: float = 1.0,
        publish_s: float = 0.05,
        cancel_poll_s: float = 0.2,
        recorded_epoch: int = 0,
        worker_id: str | None = None,
        attempt: int = 0,
        resumed_checkpoint: str | None = None,
    ) -> None:
        self.job_id = job_id
        # with a worker id, every write is fenced by the lease (store.jobs.record_epochs)
        self.worker_id = worker_id
        self.attempt = attempt
        # the checkpoint the job row names; replaced (and deleted) by this run's next one
        self.current_checkpoint = resumed_checkpoint
        self.session_factory = session_factory
        self.redis = redis
        self.artifacts = artifacts
        self.heartbeat = heartbeat
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.flush_s = flush_s
        self.publish_s = publish_s
        self.cancel_poll_s = cancel_poll_s
        # epochs up to here were recorded (and published) by an earlier attempt
        self.recorded_epoch = recorded_epoch
        self.pending: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.checkpoints_written = 0
        self.last_checkpoint_epoch: int | None = None
        now = time.monotonic()
        self._last_flush = self._last_publish = self._last_poll = now
        self._last_checkpoint = now
        self._redis_warned = False

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, state: TrainState) -> None:
        self._last_checkpoint = time.monotonic()
        self._check_stop(force_poll=True)

    def on_batch_end(self, state: TrainState) -> None:
        self._check_stop()

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        record = json_safe(record)
        epoch = int(record["epoch"])
        self.pending.append(record)
        if self._checkpoint_due(epoch):
            # the checkpoint is on disk before this epoch is recorded or published, so a
            # resumed attempt never starts behind what clients have seen
            self._write_checkpoint(state, epoch)
        elif time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
        if epoch > self.recorded_epoch:
            self.events.append(encode_event("metrics", record))
        if time.monotonic() - self._last_publish >= self.publish_s:
            self.publish()
        self._check_stop()

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        if isinstance(error, LeaseLost):
            return  # the job is another worker's now
        # nothing is lost at the end, whatever ended training
        self.flush()
        self.publish()

    # ------------------------------------------------------------------ work

    def _checkpoint_due(self, epoch: int) -> bool:
        if self.checkpoint_every is not None:
            return epoch % self.checkpoint_every == 0
        return time.monotonic() - self._last_checkpoint >= self.checkpoint_interval_s

    def _write_checkpoint(self, state: TrainState, epoch: int) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(state.checkpoint(), buffer)
        key = checkpoint_key(self.job_id, attempt=self.attempt, epoch=epoch)
        self.artifacts.put_bytes(key, buffer.getvalue())
        try:
            self.flush(checkpoint=(key, epoch))
        except LeaseLost:
            self._delete_quietly(key)  # never named by the job row
            raise
        previous, self.current_checkpoint = self.current_checkpoint, key
        if previous and previous != key:
            self._delete_quietly(previous)
        self.checkpoints_written += 1
        self.last_checkpoint_epoch = epoch
        self._last_checkpoint = time.monotonic()

    def flush(self, checkpoint: tuple[str, int] | None = None) -> None:
        """Write pending epoch records (and the checkpoint's key) in one transaction."""
        if not self.pending and checkpoint is None:
            return
        uri, epoch = checkpoint if checkpoint else (None, None)
        with self.session_factory() as session:
            held = record_epochs(session, self.job_id, self.pending, checkpoint_uri=uri,
                                 checkpoint_epoch=epoch, worker_id=self.worker_id)
        if self.worker_id is not None and not held:
            self.pending = []
            raise LeaseLost(f"job {self.job_id} is no longer held by {self.worker_id}; "
                            "nothing of this attempt was recorded after its lease lapsed")
        self.pending = []
        self._last_flush = time.monotonic()

    def _delete_quietly(self, key: str) -> None:
        try:
            self.artifacts.delete(key)
        except Exception as exc:  # a leftover file costs disk, never correctness
            log.warning("could not delete %s: %s", key, exc)

    def publish(self) -> None:
        """Send queued metric events in one round trip; Redis being away loses only them."""
        self._last_publish = time.monotonic()
        if not self.events or self.redis is None:
            self.events = []
            return
        events, self.events = self.events, []
        try:
            pipe = self.redis.pipeline(transaction=False)
            channel = events_channel(self.job_id)
            for event in events:
                pipe.publish(channel, event)
            pipe.execute()
        except redis_lib.RedisError as exc:
            self._warn_redis(exc)

    def _check_stop(self, *, force_poll: bool = False) -> None:
        hb = self.heartbeat
        if hb is not None:
            if hb.lease_lost:
                raise LeaseLost(f"job {self.job_id} was taken over by another worker")
            if hb.cancel_requested:
                raise Cancelled(f"job {self.job_id} was cancelled")
        if self.redis is None:
            return
        now = time.monotonic()
        if not force_poll and now - self._last_poll < self.cancel_poll_s:
            return
        self._last_poll = now
        try:
            cancelled = self.redis.exists(cancel_key(self.job_id))
        except redis_lib.RedisError as exc:
            self._warn_redis(exc)
            return
        if cancelled:
            raise Cancelled(f"job {self.job_id} was cancelled")

    def _warn_redis(self, exc: Exception) -> None:
        if not self._redis_warned:
            log.warning("Redis is unavailable for job %s (%s); training goes on, the "
                        "database keeps every epoch", self.job_id, exc)
            self._redis_warned = True
