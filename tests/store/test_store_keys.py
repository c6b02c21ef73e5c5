from __future__ import annotations

import re

import pytest

from store.keys import create_api_key, ensure_default_key, hash_key, tenant_for_key
from store.models import ApiKey

BOTH_BACKENDS = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True)
pytestmark = BOTH_BACKENDS


def test_keys_are_stored_hashed_and_map_to_their_tenant(db_session):
    key = create_api_key(db_session, "acme-keys")
    assert re.fullmatch(r"mlp_[A-Za-z0-9_-]{43}", key)
    stored = db_session.query(ApiKey).filter_by(key_hash=hash_key(key)).one()
    assert key not in (stored.key_hash, stored.id)
    assert tenant_for_key(db_session, key).name == "acme-keys"
    second = create_api_key(db_session, "acme-keys")
    assert second != key and tenant_for_key(db_session, second).name == "acme-keys"
    assert tenant_for_key(db_session, key + "x") is None
    assert tenant_for_key(db_session, "") is None


def test_default_key_is_idempotent(db_session):
    a = ensure_default_key(db_session, "secret-from-env")
    b = ensure_default_key(db_session, "secret-from-env")
    assert a.id == b.id and a.name == "default"
    assert tenant_for_key(db_session, "secret-from-env").name == "default"
