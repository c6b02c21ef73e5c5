"""Store tests run against SQLite and, when a server answers, a fresh PostgreSQL database
(modules opt in with `pytestmark = BOTH_BACKENDS`, see below)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def tenant(db_session):
    from store.keys import get_or_create_tenant

    return get_or_create_tenant(db_session, f"t-{uuid.uuid4().hex[:8]}")
