"""The API process's settings: the shared ones (`store.settings.CommonSettings`) plus auth,
the listening address and per-tenant limits. Read once, at start-up; a bad value stops it
with a message naming the environment variable."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator

from store.keys import MAX_KEY_CHARS
from store.settings import CommonSettings, ConfigError, blank_is_none

__all__ = ["Settings", "ConfigError", "DEFAULT_REDIS_URL", "MIN_API_KEY_CHARS"]

GiB = 1024**3
MiB = 1024**2
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_API_KEY_CHARS = 16


def _env(name: str, field: str) -> AliasChoices:
    return AliasChoices(name, field)


class Settings(CommonSettings):
    """Everything `create_app` needs; `Settings.load()` reads the environment."""

    api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("MLP_API_KEY", "api_key"),
        description=f"accepted as a key of tenant 'default' (at least {MIN_API_KEY_CHARS} "
                    "characters)")
    auth: bool = Field(default=True, validation_alias=_env("MLP_AUTH", "auth"),
                       description="'off' makes every request tenant 'default'")
    host: str = Field(default="127.0.0.1", validation_alias=_env("MLP_HOST", "host"))
    port: int = Field(default=8000, ge=1, le=65535, validation_alias=_env("MLP_PORT", "port"))

    max_active_jobs_per_tenant: int = Field(
        default=100, ge=1,
        validation_alias=_env("MLP_MAX_ACTIVE_JOBS_PER_TENANT", "max_active_jobs_per_tenant"))
    max_dataset_bytes_per_tenant: int = Field(
        default=GiB, ge=1,
        validation_alias=_env("MLP_MAX_DATASET_BYTES_PER_TENANT",
                              "max_dataset_bytes_per_tenant"))
    max_request_bytes: int = Field(
        default=10 * MiB, ge=1024,
        validation_alias=_env("MLP_MAX_REQUEST_BYTES", "max_request_bytes"),
        description="largest JSON request body (uploads have MLP_MAX_UPLOAD_BYTES)")
    rate_limit_per_minute: int = Field(
        default=600, ge=0,
        validation_alias=_env("MLP_RATE_LIMIT_PER_MINUTE", "rate_limit_per_minute"),
        description="requests per minute per API key; 0 turns the limit off")
    auth_failures_per_minute: int = Field(
        default=20, ge=0,
        validation_alias=_env("MLP_AUTH_FAILURES_PER_MINUTE", "auth_failures_per_minute"),
        description="failed authentications (a malformed, unknown or revoked key) one client "
                    "address may make per minute before its requests answer 429; "
                    "0 turns the throttle off")
    reconcile_interval_s: float = Field(
        default=60.0, ge=0,
        validation_alias=_env("MLP_RECONCILE_INTERVAL_S", "reconcile_interval_s"),
        description="how often (and once at start) queued jobs missing from Redis are "
                    "queued again; 0 turns the reconciler off in this process")
    reconcile_after_s: float = Field(
        default=30.0, ge=0,
        validation_alias=_env("MLP_RECONCILE_AFTER_S", "reconcile_after_s"),
        description="a queued job without a broker message is sent again once it was "
                    "last sent this long ago (covers the gap between storing and sending)")
    max_webhooks_per_tenant: int = Field(
        default=20, ge=1, le=1000,
        validation_alias=_env("MLP_MAX_WEBHOOKS_PER_TENANT", "max_webhooks_per_tenant"),
        description="webhooks one tenant may have; creating one more answers 409")
    webhook_retention_days: float = Field(
        default=30.0, ge=0,
        validation_alias=_env("MLP_WEBHOOK_RETENTION_DAYS", "webhook_retention_days"),
        description="the reconciler deletes delivered and failed webhook deliveries this "
                    "many days after they ended; 0 keeps them")
    model_cache_size: int = Field(
        default=8, ge=0, validation_alias=_env("MLP_MODEL_CACHE_SIZE", "model_cache_size"))
    sse_poll_s: float = Field(default=1.0, gt=0, le=60,
                              validation_alias=_env("MLP_SSE_POLL_S", "sse_poll_s"))
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, le=3600,
        validation_alias=_env("MLP_SSE_HEARTBEAT_S", "sse_heartbeat_s"))
    max_streams: int = Field(
        default=256, ge=1, validation_alias=_env("MLP_MAX_STREAMS", "max_streams"),
        description="event streams one API process serves at once; more answer 429")
    max_streams_per_key: int = Field(
        default=8, ge=1,
        validation_alias=_env("MLP_MAX_STREAMS_PER_KEY", "max_streams_per_key"),
        description="event streams one API key may hold open at once; more answer 429")
    request_threads: int = Field(
        default=16, ge=1, le=1000,
        validation_alias=_env("MLP_REQUEST_THREADS", "request_threads"),
        description="threads that run blocking request work; the database pool holds one "
                    "connection for each, plus the streams' and two for background work")
    stream_db_threads: int = Field(
        default=2, ge=1, le=100,
        validation_alias=_env("MLP_STREAM_DB_THREADS", "stream_db_threads"),
        description="threads (and connections) that every event stream shares to read "
                    "the database, apart from the requests'")
    db_pool_timeout_s: float = Field(
        default=10.0, gt=0, le=600,
        validation_alias=_env("MLP_DB_POOL_TIMEOUT_S", "db_pool_timeout_s"),
        description="how long a request waits for a database connection before it answers "
                    "503 with Retry-After")
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=600,
        validation_alias=_env("MLP_HEADER_TIMEOUT_S", "header_timeout_s"),
        description="a connection whose request line and headers have not all arrived "
                    "this many seconds after it opened (or after its previous response) is "
                    "closed")
    body_idle_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        validation_alias=_env("MLP_BODY_IDLE_TIMEOUT_S", "body_idle_timeout_s"),
        description="a request body that pauses longer than this between chunks is dropped "
                    "with its connection")
    max_connections: int = Field(
        default=4096, ge=1,
        validation_alias=_env("MLP_MAX_CONNECTIONS", "max_connections"),
        description="connections (and requests in progress) one API process takes at "
                    "once; past it, new ones are answered 503")
    max_sweep_trials: int = Field(
        default=1000, ge=1, le=100_000,
        validation_alias=_env("MLP_MAX_SWEEP_TRIALS", "max_sweep_trials"),
        description="the most trials one sweep may ask for (max_trials, PATCH included)")
    max_sweep_concurrent: int = Field(
        default=16, ge=1, le=1000,
        validation_alias=_env("MLP_MAX_SWEEP_CONCURRENT", "max_sweep_concurrent"),
        description="the most trials of one sweep queued or running at once "
                    "(max_concurrent); also at most MLP_MAX_ACTIVE_JOBS_PER_TENANT")
    max_predict_cells: int = Field(
        default=1_000_000, ge=1,
        validation_alias=_env("MLP_MAX_PREDICT_CELLS", "max_predict_cells"),
        description="rows × outputs (or rows × top_k) one predict request may ask for")

    @property
    def db_pool_size(self) -> int:
        """Connections the API keeps: one per request thread, the streams', and two for the
        reconciler and the /metrics collector, so no request ever waits for the pool
        because of streams or background work."""
        return self.request_threads + self.stream_db_threads + 2

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: Any) -> Any:
        return blank_is_none(value)

    @field_validator("api_key")
    @classmethod
    def _key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # the message never holds the value (nor its length): it may be a real key
        if value is None:
            return value
        key = value.get_secret_value()
        if len(key) < MIN_API_KEY_CHARS:
            raise ValueError(
                f"an API key must be at least {MIN_API_KEY_CHARS} characters; make one with "
                "python3 -c 'import secrets; print(\"mlp_\" + secrets.token_urlsafe(32))'")
        if len(key) > MAX_KEY_CHARS or any(c.isspace() for c in key):
            raise ValueError(f"an API key must be at most {MAX_KEY_CHARS} characters, with "
                             "no spaces (it is sent as 'Authorization: Bearer <key>')")
        return value

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL
