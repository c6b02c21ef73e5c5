"""The lease a running job holds: `Heartbeat` renews it from a thread of its own and notes
when the job was cancelled or taken over (the callbacks read its two flags)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from store.jobs import renew_lease

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Renews the job's lease every `interval_s` and notes a cancel or a lost lease.

    A thread, so that a slow batch or a long evaluation never lets the lease lapse; the
    training loop reads its two flags at batch boundaries (worker.callbacks.StopWatcher).
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
