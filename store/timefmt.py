"""Datetimes as stored (UTC; SQLite hands them back naive) and as written (RFC 3339)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["as_utc", "rfc3339"]


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every datetime we store is UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def rfc3339(dt: datetime | None) -> str | None:
    dt = as_utc(dt)
    if dt is None:
        return None
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
