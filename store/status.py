"""The job statuses, once: the database models, the API's schemas and filters, the
Prometheus gauges, the SDK and the CLI all read them from here.

Pure standard library, so the client (SDK, `mlpctl` client commands) can import it without
the server's dependencies.

    queued ──► running ──► succeeded | failed
      │           │
      │           └──► cancelling ──► cancelled
      └──► cancelled
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobStatus", "TERMINAL", "ACTIVE"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE: frozenset[JobStatus] = frozenset(set(JobStatus) - TERMINAL)
