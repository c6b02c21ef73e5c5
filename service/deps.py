"""FastAPI dependencies as `Annotated` aliases: the app's services, a database session,
the caller's tenant (from the API key), and the tenant's job or dataset named in the path.
A route that receives a `JobDep` holds a job that exists and belongs to the caller; any
other job id, another tenant's included, has already answered 404.

A malformed, unknown or revoked key answers 401 and counts against the client's address;
an address that has spent its failures for the minute answers 429 before its key is looked
at (`AuthFailureThrottle`), so that a guess cannot be told from a miss."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from store.datasets import get_dataset_for_tenant
from store.jobs import get_job_for_tenant
from store.keys import DEFAULT_TENANT, get_or_create_tenant, tenant_for_key
from store.models import Dataset, Job, Tenant

from .errors import NotFound, TooManyRequests, Unauthorized
from .ratelimit import client_bucket

if TYPE_CHECKING:
    import redis
    from celery import Celery
    from redis.asyncio import Redis as AsyncRedis
    from sqlalchemy import Engine

    from store.artifacts import ArtifactStore
    from store.keys import KeyHasher

    from .inference import ModelCache
    from .observability import Observability
    from .ratelimit import AuthFailureThrottle, RateLimiter
    from .settings import Settings
    from .sse import StreamSlots

T = TypeVar("T")

__all__ = [
    "release_connection",
    "owned",
    "Services",
    "ServicesDep",
    "SessionDep",
    "TenantDep",
    "JobDep",
    "DatasetDep",
    "get_services",
    "get_session",
    "current_tenant",
    "job_of_tenant",
    "dataset_of_tenant",
]


@dataclass
class Services:
    """What the routes share, built once by the app's lifespan."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    aredis: AsyncRedis
    celery: Celery
    artifacts: ArtifactStore
    observability: Observability
    rate_limiter: RateLimiter
    auth_throttle: AuthFailureThrottle
    key_hasher: KeyHasher
    models: ModelCache
    streams: StreamSlots
    default_tenant_id: str | None = None


async def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with services.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def release_connection(session: Session) -> None:
    """End the session's transaction, so its connection goes back to the pool (objects
    stay loaded: expire_on_commit is off). Every dependency that reads the database calls
    it before it returns: FastAPI runs each sync dependency and the route in a thread of
    its own, and a request that held a connection while it waited for its next thread
    would, with enough requests at once, hold every connection while the requests that
    hold every thread wait for one (a deadlock until the pool's timeout)."""
    session.commit()

_bearer = HTTPBearer(auto_error=False, bearerFormat="API key",
                     description="an API key: `Authorization: Bearer mlp_...`")


def current_tenant(request: Request, services: ServicesDep, session: SessionDep,
                   _credentials: Annotated[HTTPAuthorizationCredentials | None,
                                           Security(_bearer)] = None) -> Tenant:
    """The tenant of the request's API key; 401 (with WWW-Authenticate) when the key is
    missing, malformed or unknown, 429 while the client's address has spent its failed
    authentications for the minute. With MLP_AUTH=off, tenant "default"."""
    if not services.settings.auth:
        tenant = session.get(Tenant, services.default_tenant_id) \
            if services.default_tenant_id else None
        if tenant is None:
            tenant = get_or_create_tenant(session, DEFAULT_TENANT)
            services.default_tenant_id = tenant.id
        release_connection(session)
        services.rate_limiter.check(f"tenant:{tenant.id}")
        return tenant
    # the connection's peer as the server reports it; X-Forwarded-For is not read here
    address = client_bucket(request.client.host if request.client else None)
    _throttled_unless_allowed(services, address)
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        services.observability.auth_failures.labels("missing").inc()
        raise Unauthorized("missing API key; send the header 'Authorization: Bearer <key>'")
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or any(c.isspace() for c in key):
        _refuse(services, address, "malformed",
                "malformed Authorization header; expected 'Bearer <key>'")
    tenant = tenant_for_key(session, key, hasher=services.key_hasher)
    release_connection(session)
    if tenant is None:
        _refuse(services, address, "unknown", "unknown or revoked API key")
    # counted under the key's keyed hash: Redis never holds anything to test guesses on
    services.rate_limiter.check(f"key:{services.key_hasher.digest(key)}")
    return tenant


def _throttled_unless_allowed(services: Services, address: str) -> None:
    try:
        services.auth_throttle.check(address)
    except TooManyRequests:
        services.observability.auth_throttled.inc()
        raise


def _refuse(services: Services, address: str, reason: str, message: str) -> NoReturn:
    """401 for a key that does not authenticate, counted against the address (429 when
    that puts it over its budget)."""
    services.observability.auth_failures.labels(reason).inc()
    try:
        services.auth_throttle.failure(address)
    except TooManyRequests:
        services.observability.auth_throttled.inc()
        raise
    raise Unauthorized(message)


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def owned(session: Session, row: T | None, kind: str, object_id: str) -> T:
    """The end of every `<kind>_of_tenant` dependency: the connection back to the pool
    (release_connection), then the tenant's row or 404 (another tenant's row is none)."""
    release_connection(session)
    if row is None:
        raise NotFound(f"no {kind} '{object_id}' for this API key")
    return row


def job_of_tenant(job_id: str, tenant: TenantDep, session: SessionDep) -> Job:
    return owned(session, get_job_for_tenant(session, tenant.id, job_id), "job", job_id)


JobDep = Annotated[Job, Depends(job_of_tenant)]


def dataset_of_tenant(dataset_id: str, tenant: TenantDep, session: SessionDep) -> Dataset:
    return owned(session, get_dataset_for_tenant(session, tenant.id, dataset_id), "dataset",
                 dataset_id)


DatasetDep = Annotated[Dataset, Depends(dataset_of_tenant)]
