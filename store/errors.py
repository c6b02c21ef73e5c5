"""Errors raised by the store; the service maps each to one HTTP answer.

StoreError
 ├── JobStateError        the job's status forbids the action (409)
 ├── IdempotencyConflict  an Idempotency-Key reused with another request body (409)
 └── InvalidCursor        a list cursor that this service did not hand out (400)
"""

from __future__ import annotations

__all__ = ["StoreError", "JobStateError", "IdempotencyConflict", "InvalidCursor"]


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


class InvalidCursor(StoreError, ValueError):
    """A list cursor that cannot be decoded."""
