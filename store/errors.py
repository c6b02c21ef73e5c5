"""Errors raised by the store; the service maps each to one HTTP answer.

StoreError
 ├── JobStateError        the job's status forbids the action (409)
 ├── IdempotencyConflict  an Idempotency-Key reused with another request body (409)
 ├── DatasetInUse         a dataset that a queued or running job uses (409)
 ├── DatasetQuota         the tenant's datasets would pass its stored-bytes limit (409)
 ├── DatasetGone          the dataset of a job being created was deleted meanwhile (409)
 ├── ActiveJobsLimit      the tenant has as many queued and running jobs as allowed (429)
 └── InvalidCursor        a list cursor that this service did not hand out (400)
"""

from __future__ import annotations

__all__ = ["StoreError", "JobStateError", "IdempotencyConflict", "DatasetInUse",
           "DatasetGone", "DatasetQuota", "ActiveJobsLimit", "InvalidCursor"]


class StoreError(Exception):
    """Root of the store's own errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobStateError(StoreError):
    """The job's status forbids the action; `status` is the status it has."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


class IdempotencyConflict(StoreError):
    """The Idempotency-Key was used before with a different request body."""


class DatasetInUse(StoreError):
    """A queued or running job trains on the dataset, so it cannot be deleted."""


class DatasetQuota(StoreError):
    """Storing the dataset would pass the tenant's limit on stored dataset bytes."""


class DatasetGone(StoreError):
    """The dataset a job was being created from was deleted in the meantime."""


class ActiveJobsLimit(StoreError):
    """The tenant already has as many queued and running jobs as it may."""

    retry_after_s = 30


class InvalidCursor(StoreError, ValueError):
    """A list cursor that cannot be decoded."""
