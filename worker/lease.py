"""The lease a running job holds: `Heartbeat` renews it from a thread of its own and notes
when the job was cancelled or taken over (the callbacks read its two flags). The trials of a
pack (worker.packs) share one `PackHeartbeat`, which renews all their leases in one UPDATE
and keeps the two flags of each trial in a `TrialLease`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from store.jobs import renew_lease, renew_leases

__all__ = ["Heartbeat", "PackHeartbeat", "TrialLease"]

log = logging.getLogger(__name__)


class _Beating(threading.Thread):
    """A thread that calls `beat()` every `interval_s` until stopped or `done()`."""

    def __init__(self, *, name: str, session_factory: Callable[[], Session], worker_id: str,
                 lease_s: float, interval_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.session_factory = session_factory
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.interval_s = interval_s
        self._stop_event = threading.Event()

    def beat(self) -> None:
        raise NotImplementedError

    def done(self) -> bool:
        """Nothing left to renew."""
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.beat()
            if self.done():
                return

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=30)


class Heartbeat(_Beating):
    """Renews the job's lease every `interval_s` and notes a cancel or a lost lease.

    A thread, so that a slow batch or a long evaluation never lets the lease lapse; the
    training loop reads its two flags at batch boundaries (worker.callbacks.StopWatcher).
    """

    def __init__(self, *, session_factory: Callable[[], Session], job_id: str,
                 worker_id: str, lease_s: float, interval_s: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", session_factory=session_factory,
                         worker_id=worker_id, lease_s=lease_s, interval_s=interval_s)
        self.job_id = job_id
        self.cancel_requested = False
        self.lease_lost = False

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

    def done(self) -> bool:
        return self.lease_lost


class TrialLease:
    """One trial's view of its pack's heartbeat: the two flags a Heartbeat has."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.cancel_requested = False
        self.lease_lost = False


class PackHeartbeat(_Beating):
    """A Heartbeat for the trials of a pack: every `interval_s` one UPDATE renews the leases
    of those whose lease is not lost, and each trial's `TrialLease` (in `leases`) notes a
    cancel or a lost lease. One thread and one database connection for the pack, whatever
    its size (the worker's connection pool is shared with its training thread)."""

    def __init__(self, *, session_factory: Callable[[], Session], job_ids: list[str],
                 worker_id: str, lease_s: float, interval_s: float) -> None:
        super().__init__(name=f"heartbeat-pack-{job_ids[0] if job_ids else ''}",
                         session_factory=session_factory, worker_id=worker_id,
                         lease_s=lease_s, interval_s=interval_s)
        self.leases = {job_id: TrialLease(job_id) for job_id in job_ids}

    def beat(self) -> None:
        held = [job_id for job_id, lease in self.leases.items() if not lease.lease_lost]
        try:
            with self.session_factory() as session:
                statuses = renew_leases(session, held, worker_id=self.worker_id,
                                        lease_s=self.lease_s)
        except SQLAlchemyError as exc:
            # the leases outlive a short database outage; try again next beat
            log.warning("could not renew the leases of %d packed trials: %s", len(held), exc)
            return
        for job_id in held:
            status = statuses.get(job_id)
            if status is None:
                self.leases[job_id].lease_lost = True
            elif status == "cancelling":
                self.leases[job_id].cancel_requested = True

    def done(self) -> bool:
        return all(lease.lease_lost for lease in self.leases.values())
