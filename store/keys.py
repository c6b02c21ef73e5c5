"""API keys: created once in plaintext, stored only as a keyed hash, looked up by it.

The stored hash is HMAC-SHA256 of the key under a server secret: `MLP_KEY_HASH_SECRET`, or
else one generated once in `<data_dir>/key-hash-secret` (mode 0600). A copy of the database
alone is then no help in testing guesses of a key (`MLP_API_KEY` is chosen by a person and
may be guessable; generated keys carry 256 bits of randomness). Every API process and
`mlpctl keys create` of one deployment must see the same secret.

Rows written before keyed hashes hold the plain sha256 of their key. A key that matches no
keyed hash is looked up by its sha256, and a row found that way is rewritten with the keyed
hash (one conditional UPDATE), so old databases keep working and upgrade as keys are used.

The functions take the hasher bound to the session's factory (`bind_key_hasher`, done by
the API as it starts), else one read from the environment the way the service reads it
(so `mlpctl keys create` and `mlpctl standalone` hash as the API does).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .models import ApiKey, Tenant, new_id
from .settings import MIN_KEY_HASH_SECRET_CHARS, ConfigError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from .settings import CommonSettings

__all__ = ["KEY_PREFIX", "MAX_KEY_CHARS", "SECRET_FILE", "DEFAULT_TENANT", "KeyHasher",
           "legacy_digest", "load_key_hasher", "key_hasher_from_settings", "bind_key_hasher",
           "hasher_for", "create_api_key", "tenant_for_key", "ensure_default_key",
           "get_or_create_tenant"]

log = logging.getLogger(__name__)

KEY_PREFIX = "mlp_"
MAX_KEY_CHARS = 512
DEFAULT_TENANT = "default"
SECRET_FILE = "key-hash-secret"
_GENERATED_KEY = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")
_SESSION_INFO = "mlp.key_hasher"


class KeyHasher:
    """HMAC-SHA256 of API keys under the server secret (never shown by repr)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_HASH_SECRET_CHARS:
            raise ValueError(f"a key-hash secret must be at least "
                             f"{MIN_KEY_HASH_SECRET_CHARS} characters")
        self._secret = secret

    def __repr__(self) -> str:
        return "KeyHasher(<secret>)"

    def digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def legacy_digest(key: str) -> str:
    """The unkeyed sha256 that rows written before keyed hashes hold."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the secret


def load_key_hasher(*, secret: str | SecretStr | None, data_dir: str | Path) -> KeyHasher:
    """The hasher of `secret` (MLP_KEY_HASH_SECRET), else of the secret kept in the data
    directory, generated there the first time; ConfigError when it cannot be read."""
    if secret is not None:
        value = secret if isinstance(secret, str) else secret.get_secret_value()
        if value:
            try:
                return KeyHasher(value.encode("utf-8"))
            except ValueError as exc:
                raise ConfigError(f"MLP_KEY_HASH_SECRET: {exc}") from None
    return KeyHasher(_data_dir_secret(Path(data_dir)))


def key_hasher_from_settings(settings: CommonSettings) -> KeyHasher:
    return load_key_hasher(secret=settings.key_hash_secret, data_dir=settings.data_dir)


def _data_dir_secret(data_dir: Path) -> bytes:
    path = data_dir / SECRET_FILE
    try:
        if not path.exists():
            _create_secret_file(path)
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s can be read by other users; chmod 600 it (it hashes the API "
                        "keys)", path)
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read or create the key-hash secret {path} ({exc.strerror}); "
                          "set MLP_KEY_HASH_SECRET or make MLP_DATA_DIR writable") from None
    if len(value) < MIN_KEY_HASH_SECRET_CHARS:
        raise ConfigError(f"the key-hash secret in {path} is shorter than "
                          f"{MIN_KEY_HASH_SECRET_CHARS} characters; delete the file to have "
                          "one generated (keys made with it stop working) or set "
                          "MLP_KEY_HASH_SECRET")
    return value.encode("utf-8")


def _create_secret_file(path: Path) -> None:
    """Write a new secret under a temporary name, then link it into place: a process that
    starts at the same moment either wins (and both read its secret) or finds the file
    complete, never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            log.info("generated the key-hash secret %s (API keys are hashed with it; keep "
                     "it with the database)", path)
        except FileExistsError:
            pass  # another process generated it first: theirs is the one
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- which hasher


def bind_key_hasher(factory: sessionmaker[Session], hasher: KeyHasher) -> None:
    """Make every session of `factory` hash keys with `hasher`."""
    factory.configure(info={**factory.kw.get("info", {}), _SESSION_INFO: hasher})


def hasher_for(session: Session) -> KeyHasher:
    """The hasher bound to the session, else the one the environment configures."""
    hasher = session.info.get(_SESSION_INFO)
    if hasher is None:
        from .settings import CommonSettings

        hasher = key_hasher_from_settings(CommonSettings.load())
        session.info[_SESSION_INFO] = hasher
    return hasher  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- keys


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    tenant = Tenant(id=new_id("tnt"), name=name)
    session.add(tenant)
    try:
        session.commit()
    except IntegrityError:  # created by another process at the same moment
        session.rollback()
        tenant = session.scalar(select(Tenant).where(Tenant.name == name))
        if tenant is None:
            raise
    return tenant


def _store_key(session: Session, tenant: Tenant, key: str, hasher: KeyHasher) -> None:
    # a short prefix helps recognise one of our generated keys in a list (8 of its 43
    # random characters); of a key a person chose, nothing is kept
    prefix = key[:12] if _GENERATED_KEY.fullmatch(key) else ""
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hasher.digest(key),
                       prefix=prefix))
    session.commit()


def create_api_key(session: Session, tenant_name: str, *,
                   hasher: KeyHasher | None = None) -> str:
    """Create a key for the tenant (created if missing); the plaintext is returned once."""
    name = tenant_name.strip()
    if not name or len(name) > 200:
        raise ValueError("tenant name must be 1 to 200 characters")
    hasher = hasher or hasher_for(session)
    tenant = get_or_create_tenant(session, name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    _store_key(session, tenant, key, hasher)
    return key


def _find_key(session: Session, key: str, hasher: KeyHasher) -> ApiKey | None:
    """The row of `key` by its keyed hash, else by its legacy sha256 (then upgraded).
    Both are index lookups on a hash the caller cannot steer, then a constant-time compare."""
    digest = hasher.digest(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is not None:
        return row if hmac.compare_digest(row.key_hash, digest) else None
    legacy = legacy_digest(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == legacy))
    if row is None or not hmac.compare_digest(row.key_hash, legacy):
        return None
    try:
        session.execute(update(ApiKey).where(ApiKey.id == row.id, ApiKey.key_hash == legacy)
                        .values(key_hash=digest))
        session.commit()
    except IntegrityError:
        # the keyed hash is already stored (the same key written again meanwhile): the
        # legacy row still answers this time and is upgraded by nobody; harmless
        session.rollback()
        log.warning("API key %s: its keyed hash exists twice; left the legacy row as it is",
                    row.id)
    else:
        log.info("API key %s upgraded from a plain sha256 to a keyed hash", row.id)
    session.refresh(row)
    return row


def tenant_for_key(session: Session, key: str, *,
                   hasher: KeyHasher | None = None) -> Tenant | None:
    """The tenant a key belongs to, or None for an unknown or revoked key."""
    if not key or len(key) > MAX_KEY_CHARS:
        return None
    row = _find_key(session, key, hasher or hasher_for(session))
    if row is None or row.revoked:
        return None
    return session.get(Tenant, row.tenant_id)


def ensure_default_key(session: Session, key: str, *,
                       hasher: KeyHasher | None = None) -> Tenant:
    """Accept `key` (MLP_API_KEY) as a key of tenant "default"; idempotent."""
    hasher = hasher or hasher_for(session)
    tenant = get_or_create_tenant(session, DEFAULT_TENANT)
    if _find_key(session, key, hasher) is None:
        try:
            _store_key(session, tenant, key, hasher)
        except IntegrityError:  # stored by another process starting at the same time
            session.rollback()
    return tenant
