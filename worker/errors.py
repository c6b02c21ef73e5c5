"""Errors the worker raises on purpose.

WorkerError
 └── CheckpointUnreadable   the checkpoint the job row names cannot be read: the job fails
mlp_engine.errors.Cancelled
 └── LeaseLost              another worker took the job over: stop, write nothing

`LeaseLost` is a `Cancelled` (an engine `TrainingStopped`), so that a callback may raise it
to stop `fit` the way any stop request does.
"""

from __future__ import annotations

from mlp_engine.errors import Cancelled

__all__ = ["WorkerError", "CheckpointUnreadable", "LeaseLost"]


class WorkerError(Exception):
    """Root of the errors the worker raises on purpose."""


class CheckpointUnreadable(WorkerError):
    """The checkpoint a job resumes from is missing, unreadable or not an engine checkpoint.

    Training from epoch 0 instead would silently throw away the epochs already paid for
    (and, with them, the promise of the same weights as an uninterrupted run)."""

    def __init__(self, key: str, cause: str) -> None:
        super().__init__(f"cannot resume from checkpoint {key}: {cause}")
        self.key = key
        self.cause = cause


class LeaseLost(Cancelled):
    """Another worker took the job over (this one's lease expired): stop, write nothing."""
