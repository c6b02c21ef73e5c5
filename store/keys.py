"""API keys: created once in plaintext, stored only as their sha256, looked up by hash.

Keys carry 256 bits of randomness (`mlp_` + 43 URL-safe characters), so a fast hash is
enough, and looking a key up by its hash compares in constant time with respect to the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import ApiKey, Tenant, new_id

__all__ = ["KEY_PREFIX", "hash_key", "create_api_key", "tenant_for_key", "ensure_default_key",
           "get_or_create_tenant", "DEFAULT_TENANT"]

KEY_PREFIX = "mlp_"
DEFAULT_TENANT = "default"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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


def _store_key(session: Session, tenant: Tenant, key: str) -> None:
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key),
                       prefix=key[:12]))
    session.commit()


def create_api_key(session: Session, tenant_name: str) -> str:
    """Create a key for the tenant (created if missing); the plaintext is returned once."""
    name = tenant_name.strip()
    if not name or len(name) > 200:
        raise ValueError("tenant name must be 1 to 200 characters")
    tenant = get_or_create_tenant(session, name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    _store_key(session, tenant, key)
    return key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    """The tenant a key belongs to, or None for an unknown or revoked key."""
    if not key or len(key) > 512:
        return None
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked or not hmac.compare_digest(row.key_hash, digest):
        return None
    return session.get(Tenant, row.tenant_id)


def ensure_default_key(session: Session, key: str) -> Tenant:
    """Accept `key` (MLP_API_KEY) as a key of tenant "default"; idempotent."""
    tenant = get_or_create_tenant(session, DEFAULT_TENANT)
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if existing is None:
        try:
            _store_key(session, tenant, key)
        except IntegrityError:  # stored by another process starting at the same time
            session.rollback()
    return tenant
