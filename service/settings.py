"""The API process's settings: the shared ones (`store.settings.CommonSettings`) plus auth,
the listening address and per-tenant limits. Read once, at start-up; a bad value stops it
with a message naming the environment variable."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from store.settings import CommonSettings, ConfigError

__all__ = ["Settings", "ConfigError", "DEFAULT_REDIS_URL"]

GiB = 1024**3
MiB = 1024**2
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _env(name: str, field: str) -> AliasChoices:
    return AliasChoices(name, field)


class Settings(CommonSettings):
    """Everything `create_app` needs; `Settings.load()` reads the environment."""

    api_key: str | None = Field(
        default=None, min_length=8, validation_alias=_env("MLP_API_KEY", "api_key"),
        description="accepted as a key of tenant 'default' (at least 8 characters)")
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
    model_cache_size: int = Field(
        default=8, ge=0, validation_alias=_env("MLP_MODEL_CACHE_SIZE", "model_cache_size"))
    sse_poll_s: float = Field(default=1.0, gt=0, le=60,
                              validation_alias=_env("MLP_SSE_POLL_S", "sse_poll_s"))
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, le=3600,
        validation_alias=_env("MLP_SSE_HEARTBEAT_S", "sse_heartbeat_s"))

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL
