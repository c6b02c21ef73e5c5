"""Keyset pagination, newest first, for every list the API answers (jobs, datasets, and
whatever comes next): one cursor encoding, one ordering, one way to ask for the next page.

A cursor is the (created_at, id) of the last row of a page, base64url of a JSON pair; the
next page holds the rows strictly older in that order, so rows created meanwhile never
shift a page.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from .errors import InvalidCursor
from .timefmt import as_utc

__all__ = ["encode_cursor", "decode_cursor", "keyset_page", "MAX_PAGE"]

MAX_PAGE = 200
Row = TypeVar("Row")


def encode_cursor(row: Any) -> str:
    created = as_utc(row.created_at)
    assert created is not None
    raw = json.dumps([created.isoformat(timespec="microseconds"), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at in UTC, id); InvalidCursor for anything this service did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        created_at = as_utc(datetime.fromisoformat(created))
        if not isinstance(row_id, str) or created_at is None:
            raise TypeError
    except (ValueError, TypeError) as exc:
        raise InvalidCursor("cursor: not a cursor this service handed out; "
                            "pass next_cursor from the previous page") from exc
    return created_at, row_id


def keyset_page(session: Session, query: Select[tuple[Row]], model: Any, *, limit: int,
                cursor: str | None) -> tuple[list[Row], str | None]:
    """One page of `query` (rows of `model`, which has `created_at` and `id`), newest
    first, and the cursor of the next page (None on the last)."""
    limit = max(1, min(int(limit), MAX_PAGE))
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        if session.get_bind().dialect.name == "sqlite":
            created_at = created_at.replace(tzinfo=None)  # compared as stored: naive UTC
        query = query.where(or_(model.created_at < created_at,
                                and_(model.created_at == created_at, model.id < row_id)))
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
