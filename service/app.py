"""The FastAPI application: `create_app(settings)` wires settings, database, Redis, the
Celery client (used only to send tasks by name), the artifact store, error handlers,
metrics and the routers. Run with `uvicorn --factory service.app:create_app`.

Start-up imports no torch and no worker code; the first prediction loads torch lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import redis
from fastapi import FastAPI

from messaging.celery_factory import make_celery, queue_keys
from messaging.redis_url import async_redis_from_url, redis_from_url
from store.artifacts import ArtifactStore
from store.db import init_db, make_engine, make_session_factory
from store.jobs import count_by_status
from store.keys import (
    DEFAULT_TENANT,
    bind_key_hasher,
    ensure_default_key,
    get_or_create_tenant,
    key_hasher_from_settings,
)

from .deps import Services
from .errors import install_error_handlers
from .inference import ModelCache
from .middleware import BodySizeLimitMiddleware, HeadMiddleware
from .observability import (
    QUEUES,
    MetricsMiddleware,
    Observability,
    install_access_log_redaction,
)
from .ratelimit import AuthFailureThrottle, RateLimiter
from .reconciler import remove_stale_uploads, run_reconciler
from .routes import catalog, dashboard, datasets, docs, health, jobs, plots, sweeps, webhooks
from .server import release_free_memory
from .settings import Settings
from .sse import StreamSlots

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _package_version() -> str:
    """The installed package's version (pyproject.toml), which the OpenAPI document states."""
    try:
        return importlib.metadata.version("mlp-training-service")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree not installed
        return "0+unknown"


API_VERSION = _package_version()


def _start(settings: Settings, observability: Observability) -> Services:
    """Blocking start-up work (migrations, connections), run in a thread."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "tmp").mkdir(exist_ok=True)
    assert settings.database_url is not None and settings.artifacts_url is not None
    init_db(settings.database_url)
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                         max_overflow=0, pool_timeout_s=settings.db_pool_timeout_s)
    session_factory = make_session_factory(engine)
    key_hasher = key_hasher_from_settings(settings)
    bind_key_hasher(session_factory, key_hasher)  # keys made with these sessions work here
    redis_url = settings.effective_redis_url
    if settings.redis_url is None:
        log.warning("REDIS_URL is not set; using %s", redis_url)
    client = redis_from_url(redis_url, socket_connect_timeout=3, socket_timeout=10,
                            health_check_interval=30)
    celery = make_celery(redis_url, max_runtime_s=settings.max_runtime_s)
    artifacts = ArtifactStore.from_settings(settings)

    default_tenant_id = None
    with session_factory() as session:
        if settings.api_key:
            default_tenant_id = ensure_default_key(
                session, settings.api_key.get_secret_value(), hasher=key_hasher).id
        if not settings.auth:
            default_tenant_id = get_or_create_tenant(session, DEFAULT_TENANT).id

    def jobs_by_status() -> dict[str, int]:
        with session_factory() as session:
            return count_by_status(session)

    def queue_depths() -> dict[str, int]:
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            for key in queue_keys(queue):  # one list per priority level
                pipe.llen(key)
        lengths = iter(int(n) for n in pipe.execute())
        return {queue: sum(next(lengths) for _ in queue_keys(queue)) for queue in QUEUES}

    observability.add_state(jobs_by_status=jobs_by_status, queue_depths=queue_depths)
    return Services(
        settings=settings, engine=engine, session_factory=session_factory, redis=client,
        aredis=async_redis_from_url(redis_url, socket_connect_timeout=3,
                                    health_check_interval=30),
        celery=celery, artifacts=artifacts, observability=observability,
        rate_limiter=RateLimiter(client, per_minute=settings.rate_limit_per_minute),
        auth_throttle=AuthFailureThrottle(client,
                                          per_minute=settings.auth_failures_per_minute),
        key_hasher=key_hasher,
        models=ModelCache(settings.model_cache_size), default_tenant_id=default_tenant_id,
        streams=StreamSlots(per_owner=settings.max_streams_per_key,
                            total=settings.max_streams,
                            db_threads=settings.stream_db_threads))


def _stop(services: Services) -> None:
    # shutting down: a connection that does not close cleanly is logged, not raised, so
    # that the rest is still released
    try:
        services.celery.close()
    except Exception as exc:  # kombu/redis/OS errors alike; nothing to do but say so
        log.warning("closing the Celery client: %s", exc)
    try:
        services.redis.close()
    except (redis.RedisError, OSError) as exc:
        log.warning("closing the Redis client: %s", exc)
    services.engine.dispose()


async def _trim_memory_every(seconds: float) -> None:
    """Hand freed heap pages back to the system now and then (service.server explains)."""
    while True:
        await asyncio.sleep(seconds)
        await anyio.to_thread.run_sync(release_free_memory)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app. Without `settings`, they are read from the environment (a bad value
    raises ConfigError naming the variable)."""
    settings = settings or Settings.load()
    observability = Observability()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # blocking request work runs on this many threads, each with a pooled connection
        anyio.to_thread.current_default_thread_limiter().total_tokens = \
            settings.request_threads
        services = await anyio.to_thread.run_sync(_start, settings, observability)
        app.state.services = services
        await anyio.to_thread.run_sync(remove_stale_uploads, Path(settings.data_dir) / "tmp")
        reconciler = asyncio.create_task(run_reconciler(services), name="mlp-reconciler")
        trimmer = asyncio.create_task(_trim_memory_every(30.0), name="mlp-memory-trim")
        try:
            yield
        finally:
            trimmer.cancel()
            reconciler.cancel()
            try:
                await reconciler
            except asyncio.CancelledError:
                pass  # what cancel() asked for
            except Exception:  # it died earlier; say how, then go on stopping
                log.exception("the reconciler had stopped with an error")
            try:
                await services.aredis.aclose()
            except (redis.RedisError, OSError) as exc:
                log.warning("closing the async Redis client: %s", exc)
            await anyio.to_thread.run_sync(_stop, services)

    app = FastAPI(
        title="MLP Training Service",
        version=API_VERSION,
        description="Train multilayer perceptrons over REST: describe a job, follow its "
                    "metrics, download its weights or ask it for predictions.",
        lifespan=lifespan,
        # /docs is served from the package (routes/docs.py), so it works offline
        docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
                       exempt=("/v1/datasets",))
    app.add_middleware(MetricsMiddleware, observability=observability)
    app.add_middleware(HeadMiddleware)
    install_access_log_redaction()
    for module in (health, catalog, jobs, plots, datasets, docs, webhooks, dashboard, sweeps):
        app.include_router(module.router)
    app.include_router(plots.sweep_router)
    return app
