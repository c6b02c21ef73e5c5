"""FastAPI dependencies as `Annotated` aliases: the app's services, a database session,
the caller's tenant (from the API key), and the tenant's job or dataset named in the path.
A route that receives a `JobDep` holds a job that exists and belongs to the caller; any
other job id, another tenant's included, has already answered 404."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.jobs import could_be_id, get_job_for_tenant
from store.keys import DEFAULT_TENANT, get_or_create_tenant, tenant_for_key
from store.models import Dataset, Job, Tenant

from .errors import NotFound, Unauthorized

if TYPE_CHECKING:
    import redis
    from celery import Celery
    from redis.asyncio import Redis as AsyncRedis
    from sqlalchemy import Engine

    from store.artifacts import ArtifactStore

    from .inference import ModelCache
    from .observability import Observability
    from .ratelimit import RateLimiter
    from .settings import Settings

__all__ = [
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
    models: ModelCache
    default_tenant_id: str | None = None


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with services.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, bearerFormat="API key",
                     description="an API key: `Authorization: Bearer mlp_...`")


def current_tenant(request: Request, services: ServicesDep, session: SessionDep,
                   _credentials: Annotated[HTTPAuthorizationCredentials | None,
                                           Security(_bearer)] = None) -> Tenant:
    """The tenant of the request's API key; 401 (with WWW-Authenticate) when the key is
    missing, malformed or unknown. With MLP_AUTH=off, tenant "default"."""
    if not services.settings.auth:
        tenant = session.get(Tenant, services.default_tenant_id) \
            if services.default_tenant_id else None
        if tenant is None:
            tenant = get_or_create_tenant(session, DEFAULT_TENANT)
            services.default_tenant_id = tenant.id
        services.rate_limiter.check(f"tenant:{tenant.id}")
        return tenant
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        raise Unauthorized("missing API key; send the header 'Authorization: Bearer <key>'")
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or any(c.isspace() for c in key):
        raise Unauthorized("malformed Authorization header; expected 'Bearer <key>'")
    tenant = tenant_for_key(session, key)
    if tenant is None:
        raise Unauthorized("unknown or revoked API key")
    services.rate_limiter.check(f"key:{key}")
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def job_of_tenant(job_id: str, tenant: TenantDep, session: SessionDep) -> Job:
    job = get_job_for_tenant(session, tenant.id, job_id)
    if job is None:
        raise NotFound(f"no job '{job_id}' for this API key")
    return job


JobDep = Annotated[Job, Depends(job_of_tenant)]


def dataset_of_tenant(dataset_id: str, tenant: TenantDep, session: SessionDep) -> Dataset:
    dataset = session.scalar(select(Dataset).where(
        Dataset.id == dataset_id, Dataset.tenant_id == tenant.id)) if could_be_id(
        dataset_id) else None
    if dataset is None:
        raise NotFound(f"no dataset '{dataset_id}' for this API key")
    return dataset


DatasetDep = Annotated[Dataset, Depends(dataset_of_tenant)]
