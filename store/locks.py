"""Row locks that serialise a check with the write it guards (quotas, limits, deletes).

On PostgreSQL `SELECT ... FOR UPDATE` holds the row until the transaction ends; SQLite has
no row locks (the clause is dropped) but lets one writer at a time, so there a guarded
write inserts first and checks after, while it holds the database's write lock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

__all__ = ["lock_row"]


def lock_row(session: Session, model: Any, row_id: str) -> bool:
    """Lock the row of `model` with this id until the transaction ends; False if none."""
    return session.scalar(select(model.id).where(model.id == row_id).with_for_update()) \
        is not None
