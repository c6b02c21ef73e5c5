"""`PackBook`: what the trials of a pack (worker.packs) write as they train, their epoch
records and log lines, written for all of them in one transaction.

A lone job writes its records (MetricsRecorder) and its log (JobLogRecorder) in
transactions of its own, at most once per flush interval and at its end; sixteen trials
trained as one pack would make sixteen times as many, and through the service that
bookkeeping cost as much as the pack's training (benchmarks/packed_service.py). The book
writes every trial's unwritten records and kept lines together, fenced by the lease as each
lone write is: one conditional UPDATE takes the rows of the trials this worker still holds
(store.locks.hold_jobs); a trial it no longer holds gets nothing written, its log stops,
and its MetricsRecorder raises LeaseLost at its next epoch end, as a lone job's would.

It writes at the first epoch end of the pack (so that a follower sees every trial start),
then at most once per `flush_s`, and once more when the pack has trained, before any
trial ends (worker.packs). Checkpoints and the records a sweep's pruner writes before it
decides are still written by the trial alone, at once (CheckpointWriter, TrialPruner): the
ledger they share with the book says what is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from store.jobs import add_epochs
from store.locks import hold_jobs
from store.logs import LogLine, add_log_lines

from .callbacks import JobLedger
from .job_log import JobLog, LogLimits

__all__ = ["PackBook"]

log = logging.getLogger(__name__)


@dataclass
class _Trial:
    ledger: JobLedger
    job_log: JobLog | None
    history: Sequence[dict[str, Any]] = field(default_factory=list)
    lost: bool = False  # its lease: another worker holds the job


class PackBook:
    def __init__(self, session_factory: Callable[[], Session], *, worker_id: str,
                 limits: LogLimits, flush_s: float = 1.0) -> None:
        self.session_factory = session_factory
        self.worker_id = worker_id
        self.limits = limits
        self.flush_s = flush_s
        self.flushes = 0  # transactions written (the tests count them)
        self._trials: dict[str, _Trial] = {}
        self._last = float("-inf")  # the first epoch end writes

    def join(self, ledger: JobLedger, job_log: JobLog | None) -> None:
        """A trial of the pack: its ledger (what is written of its records) and its log."""
        self._trials[ledger.job_id] = _Trial(ledger=ledger, job_log=job_log)

    def note(self, job_id: str, history: Sequence[dict[str, Any]]) -> None:
        """The trial's records so far (its TrainState's history)."""
        self._trials[job_id].history = history

    def lost(self, job_id: str) -> bool:
        """Whether a write found the trial's job held by another worker."""
        return self._trials[job_id].lost

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write every trial's unwritten records and kept log lines, in one transaction.
        A database error keeps them all for the next flush and is raised (to the trial
        whose epoch end flushed: it fails as a lone job whose write failed would)."""
        self._last = time.monotonic()
        writes: list[tuple[_Trial, list[dict[str, Any]], list[LogLine]]] = []
        for trial in self._trials.values():
            if trial.lost:
                continue
            records = trial.ledger.unwritten(trial.history)
            lines = trial.job_log.take() if trial.job_log is not None \
                and not trial.job_log.lease_lost else []
            if records or lines:
                writes.append((trial, records, lines))
        if not writes:
            return
        try:
            lasts = self._write(writes)
        except SQLAlchemyError as exc:
            for trial, _, lines in writes:
                if lines and trial.job_log is not None:
                    trial.job_log.put_back(lines, exc)
            raise
        self.flushes += 1
        for trial, records, lines in writes:
            job_id = trial.ledger.job_id
            if job_id not in lasts:
                trial.lost = True
                log.warning("job %s: lease lost to another worker; nothing more of this "
                            "attempt is recorded", job_id)
            else:
                trial.ledger.wrote(records)
            if lines and trial.job_log is not None:
                trial.job_log.saved(lasts.get(job_id))

    def _write(self, writes: list[tuple[_Trial, list[dict[str, Any]], list[LogLine]]]
               ) -> dict[str, int | None]:
        """One transaction: per trial this worker holds, its records and lines; the
        trials written (each with its last log line's number, None without lines)."""
        lasts: dict[str, int | None] = {}
        with self.session_factory() as session:
            held = hold_jobs(session, [t.ledger.job_id for t, _, _ in writes], self.worker_id)
            for trial, records, lines in writes:
                job_id = trial.ledger.job_id
                if job_id not in held:
                    continue
                if records and not add_epochs(session, job_id, records):
                    continue  # gone (deleted): nothing to write for it
                lasts[job_id] = add_log_lines(
                    session, job_id, lines, max_lines=self.limits.max_lines,
                    max_chars=self.limits.max_chars) if lines else None
            session.commit()
        return lasts
