"""The Idempotency-Key check, once, for every resource created with one (jobs, and later
sweeps): a repeat with the same key and the same request returns the row made the first
time; the same key with another request is a conflict."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import IdempotencyConflict

__all__ = ["replayed"]


def replayed(session: Session, model: Any, *, tenant_id: str, key: str | None,
             request_hash: str | None) -> Any | None:
    """The row that `key` created for this tenant, or None. Raises IdempotencyConflict when
    that row was created by a request with another hash. `model` has `tenant_id`,
    `idempotency_key` and `request_hash` columns."""
    if key is None:
        return None
    row = session.scalar(select(model).where(model.tenant_id == tenant_id,
                                             model.idempotency_key == key))
    if row is not None and row.request_hash != request_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a new request")
    return row
