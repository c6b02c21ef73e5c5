"""The job statuses, once: the database models, the API's schemas and filters, the
Prometheus gauges, the SDK and the CLI all read them from here.

Pure standard library, so the client (SDK, `mlpctl` client commands) can import it without
the server's dependencies.

    queued ──► running ──► succeeded | failed | pruned (a sweep trial stopped early)
      │           │
      │           └──► cancelling ──► cancelled
      └──► cancelled

A sweep (SPEC 9) has statuses of its own, `SweepStatus`:

    queued ──► running ──► succeeded | failed
      └──────────┴──cancel──► cancelled      (PATCH max_trials: succeeded | failed ──► running)
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobStatus", "TERMINAL", "ACTIVE", "SweepStatus", "SWEEP_TERMINAL", "SWEEP_ACTIVE"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    PRUNED = "pruned"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED})
ACTIVE: frozenset[JobStatus] = frozenset(set(JobStatus) - TERMINAL)


class SweepStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


SWEEP_TERMINAL: frozenset[SweepStatus] = frozenset(
    {SweepStatus.SUCCEEDED, SweepStatus.FAILED, SweepStatus.CANCELLED})
SWEEP_ACTIVE: frozenset[SweepStatus] = frozenset(set(SweepStatus) - SWEEP_TERMINAL)
