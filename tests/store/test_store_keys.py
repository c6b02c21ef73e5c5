"""API keys: stored as an HMAC-SHA256 under the server secret, found again by it; legacy
rows holding a plain sha256 keep working and are rewritten on first use; the secret comes
from MLP_KEY_HASH_SECRET or a 0600 file generated once in the data directory."""

from __future__ import annotations

import re
import stat
import threading
import uuid

import pytest
from sqlalchemy import select

from store.keys import (
    SECRET_FILE,
    KeyHasher,
    bind_key_hasher,
    create_api_key,
    ensure_default_key,
    get_or_create_tenant,
    legacy_digest,
    load_key_hasher,
    tenant_for_key,
)
from store.models import ApiKey, new_id
from store.settings import ConfigError

BOTH_BACKENDS = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True)

SECRET = b"test-secret-" + b"s" * 32


@pytest.fixture
def hasher() -> KeyHasher:
    return KeyHasher(SECRET)


def _hashes(session) -> set[str]:
    session.expire_all()
    return set(session.scalars(select(ApiKey.key_hash)))


@BOTH_BACKENDS
def test_keys_are_stored_as_a_keyed_hash_and_map_to_their_tenant(db_session, hasher):
    name = f"acme-{uuid.uuid4().hex[:6]}"
    key = create_api_key(db_session, name, hasher=hasher)
    assert re.fullmatch(r"mlp_[A-Za-z0-9_-]{43}", key)
    stored = db_session.scalars(select(ApiKey).where(ApiKey.key_hash == hasher.digest(key))).one()
    assert key not in (stored.key_hash, stored.id)
    assert stored.prefix == key[:12]  # "mlp_" and 8 of its 43 random characters
    assert legacy_digest(key) not in _hashes(db_session)
    assert tenant_for_key(db_session, key, hasher=hasher).name == name
    second = create_api_key(db_session, name, hasher=hasher)
    assert second != key and tenant_for_key(db_session, second, hasher=hasher).name == name
    assert tenant_for_key(db_session, key + "x", hasher=hasher) is None
    assert tenant_for_key(db_session, "", hasher=hasher) is None
    assert tenant_for_key(db_session, "k" * 600, hasher=hasher) is None
    # the same key under another server secret is unknown: the secret is part of the hash
    assert tenant_for_key(db_session, key, hasher=KeyHasher(b"another-" + b"x" * 32)) is None


@BOTH_BACKENDS
def test_a_legacy_sha256_row_keeps_working_and_is_upgraded(db_session, hasher):
    tenant = get_or_create_tenant(db_session, f"old-{uuid.uuid4().hex[:6]}")
    key = "mlp_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
    row_id = new_id("key")
    db_session.add(ApiKey(id=row_id, tenant_id=tenant.id, key_hash=legacy_digest(key),
                          prefix=key[:12]))
    db_session.commit()

    assert tenant_for_key(db_session, key, hasher=hasher).id == tenant.id
    row = db_session.get(ApiKey, row_id)
    db_session.refresh(row)
    assert row.key_hash == hasher.digest(key)  # rewritten on first use
    assert legacy_digest(key) not in _hashes(db_session)
    assert tenant_for_key(db_session, key, hasher=hasher).id == tenant.id  # by HMAC now
    assert tenant_for_key(db_session, key + "x", hasher=hasher) is None


@BOTH_BACKENDS
def test_a_revoked_legacy_row_stays_refused(db_session, hasher):
    tenant = get_or_create_tenant(db_session, f"rev-{uuid.uuid4().hex[:6]}")
    key = f"revoked-legacy-key-{uuid.uuid4().hex}"
    db_session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=legacy_digest(key),
                          prefix="", revoked=True))
    db_session.commit()
    assert tenant_for_key(db_session, key, hasher=hasher) is None
    assert tenant_for_key(db_session, key, hasher=hasher) is None


@BOTH_BACKENDS
def test_default_key_is_idempotent_and_upgrades_a_legacy_row(db_session, hasher):
    key = f"secret-from-env-{uuid.uuid4().hex}"
    a = ensure_default_key(db_session, key, hasher=hasher)
    b = ensure_default_key(db_session, key, hasher=hasher)
    assert a.id == b.id and a.name == "default"
    assert tenant_for_key(db_session, key, hasher=hasher).name == "default"
    rows = db_session.scalars(select(ApiKey).where(ApiKey.key_hash == hasher.digest(key))).all()
    assert len(rows) == 1 and rows[0].prefix == ""  # nothing of a chosen key is kept

    old = f"old-env-key-{uuid.uuid4().hex}"
    db_session.add(ApiKey(id=new_id("key"), tenant_id=a.id, key_hash=legacy_digest(old),
                          prefix=""))
    db_session.commit()
    before = len(_hashes(db_session))
    ensure_default_key(db_session, old, hasher=hasher)
    hashes = _hashes(db_session)
    assert len(hashes) == before and hasher.digest(old) in hashes  # rewritten, not added


@BOTH_BACKENDS
def test_a_bound_hasher_is_used_by_every_session_of_the_factory(session_factory, hasher):
    bind_key_hasher(session_factory, hasher)
    try:
        with session_factory() as session:
            key = create_api_key(session, f"bound-{uuid.uuid4().hex[:6]}")
        with session_factory() as session:
            assert hasher.digest(key) in _hashes(session)
            assert tenant_for_key(session, key) is not None
    finally:
        session_factory.kw.pop("info", None)


@BOTH_BACKENDS
def test_without_a_bound_hasher_the_environment_configures_it(db_session, monkeypatch,
                                                               tmp_path):
    """What `mlpctl keys create` does: the secret the API would use with this environment."""
    monkeypatch.delenv("MLP_KEY_HASH_SECRET", raising=False)
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path))
    key = create_api_key(db_session, f"cli-{uuid.uuid4().hex[:6]}")
    api_hasher = load_key_hasher(secret=None, data_dir=tmp_path)
    assert api_hasher.digest(key) in _hashes(db_session)
    assert tenant_for_key(db_session, key, hasher=api_hasher) is not None


# --------------------------------------------------------------------------- the secret


def test_the_secret_is_generated_once_in_the_data_dir_with_mode_0600(tmp_path):
    data_dir = tmp_path / "data"
    hashers: list[KeyHasher] = []
    threads = [threading.Thread(target=lambda: hashers.append(
        load_key_hasher(secret=None, data_dir=data_dir))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path = data_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len({h.digest("some-key") for h in hashers}) == 1  # one secret, however started
    assert [p.name for p in data_dir.iterdir()] == [SECRET_FILE]  # no temporary left
    again = load_key_hasher(secret=None, data_dir=data_dir)
    assert again.digest("some-key") == hashers[0].digest("some-key")
    assert "s" * 10 not in repr(again) and path.read_text().strip() not in repr(again)
    # MLP_KEY_HASH_SECRET, when set, is the secret (deployments with several API processes)
    explicit = load_key_hasher(secret="e" * 40, data_dir=data_dir)
    assert explicit.digest("some-key") != again.digest("some-key")
    assert explicit.digest("some-key") == KeyHasher(b"e" * 40).digest("some-key")


def test_a_broken_secret_file_stops_with_a_message_naming_it(tmp_path):
    path = tmp_path / SECRET_FILE
    path.write_text("too-short")
    with pytest.raises(ConfigError, match="key-hash-secret") as info:
        load_key_hasher(secret=None, data_dir=tmp_path)
    assert "too-short" not in str(info.value)
    with pytest.raises(ConfigError, match="MLP_KEY_HASH_SECRET") as info:
        load_key_hasher(secret="short-secret-value", data_dir=tmp_path)
    assert "short-secret-value" not in str(info.value)
