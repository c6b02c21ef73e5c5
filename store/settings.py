"""Configuration shared by every process kind (API, worker, CLI), read from the environment.

`CommonSettings.load()` is the one place a process reads it; a bad value stops start-up with
a `ConfigError` whose message names the environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self, get_args

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from messaging.redis_url import with_sentinel_master
from mlp_engine.spec import Limits
from store.artifacts import DEFAULT_CACHE_MAX_BYTES

__all__ = ["CommonSettings", "ConfigError", "env_name", "blank_is_none",
           "MIN_KEY_HASH_SECRET_CHARS"]

MiB = 1024 * 1024
MIN_KEY_HASH_SECRET_CHARS = 32


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the variable."""


class CommonSettings(BaseSettings):
    """Settings every process shares: where data lives and the limits on a job."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True,
        validate_default=True,
        # a ValidationError printed anywhere (a traceback, a log) never shows a value:
        # some of these are secrets (MLP_API_KEY, MLP_KEY_HASH_SECRET, passwords in URLs)
        hide_input_in_errors=True,
    )

    data_dir: Path = Field(default=Path("./data"),
                           validation_alias=AliasChoices("MLP_DATA_DIR", "data_dir"))
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="default sqlite:///<data_dir>/mlp.db")
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="default none: standalone mode starts an embedded Redis; "
                    "redis://, rediss://, unix:// or Sentinel: "
                    "sentinel://host1:26379;sentinel://host2:26379/0 (messaging.redis_url)")
    redis_sentinel_master: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLP_REDIS_SENTINEL_MASTER", "redis_sentinel_master"),
        description="the master group that the sentinels of a sentinel:// REDIS_URL watch; "
                    "written into redis_url as ?master_name=, which every process passes on")
    artifacts_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MLP_ARTIFACTS_URL", "artifacts_url"),
        description="default <data_dir>/artifacts; any fsspec URL, such as s3://bucket/prefix "
                    "(the [s3] extra; AWS_* variables for credentials, region and the "
                    "endpoint of an S3-compatible store)")
    artifacts_cache_max_bytes: int = Field(
        default=DEFAULT_CACHE_MAX_BYTES, ge=0,
        validation_alias=AliasChoices("MLP_ARTIFACTS_CACHE_MAX_BYTES",
                                      "artifacts_cache_max_bytes"),
        description="what the local copies of a remote artifact store's files (datasets, "
                    "weights) may take on this machine; the least recently used go first")

    max_parameters: int = Field(
        default=20_000_000, ge=1,
        validation_alias=AliasChoices("MLP_MAX_PARAMETERS", "max_parameters"))
    max_epochs: int = Field(default=10_000, ge=1,
                            validation_alias=AliasChoices("MLP_MAX_EPOCHS", "max_epochs"))
    max_hidden_layers: int = Field(
        default=64, ge=0,
        validation_alias=AliasChoices("MLP_MAX_HIDDEN_LAYERS", "max_hidden_layers"))
    max_hidden_width: int = Field(
        default=8192, ge=1,
        validation_alias=AliasChoices("MLP_MAX_HIDDEN_WIDTH", "max_hidden_width"))
    max_inline_rows: int = Field(
        default=10_000, ge=1,
        validation_alias=AliasChoices("MLP_MAX_INLINE_ROWS", "max_inline_rows"))
    max_runtime_s: float = Field(
        default=86_400.0, gt=0,
        validation_alias=AliasChoices("MLP_MAX_RUNTIME_S", "max_runtime_s"))
    max_upload_bytes: int = Field(
        default=100 * MiB, ge=1,
        validation_alias=AliasChoices("MLP_MAX_UPLOAD_BYTES", "max_upload_bytes"))
    max_uncompressed_bytes: int | None = Field(
        default=None, ge=1,
        description="what an uploaded npz/parquet may expand to (default 4 x upload limit)",
        validation_alias=AliasChoices("MLP_MAX_UNCOMPRESSED_BYTES", "max_uncompressed_bytes"))
    max_attempts: int = Field(default=3, ge=1, le=100,
                              validation_alias=AliasChoices("MLP_MAX_ATTEMPTS", "max_attempts"))
    lease_seconds: float = Field(
        default=60.0, ge=2, le=86_400,
        validation_alias=AliasChoices("MLP_LEASE_SECONDS", "lease_seconds"))
    max_job_memory_bytes: int = Field(
        default_factory=lambda: default_job_memory_bytes(),
        ge=16 * MiB,
        validation_alias=AliasChoices("MLP_MAX_JOB_MEMORY_BYTES", "max_job_memory_bytes"),
        description="the most memory one job may take while it trains (estimated at submit: "
                    "more is refused with 422; enforced in the worker: a job that takes more "
                    "fails, the host does not); default: half this machine's memory")
    max_running_jobs_per_tenant: int = Field(
        default=0, ge=0,
        validation_alias=AliasChoices("MLP_MAX_RUNNING_JOBS_PER_TENANT",
                                      "max_running_jobs_per_tenant"),
        description="jobs of one tenant that train at once across all workers; its other "
                    "jobs wait, queued, behind other tenants' jobs; 0: no limit")
    webhook_allow_private: bool = Field(
        default=False,
        validation_alias=AliasChoices("MLP_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private"),
        description="let webhooks target loopback and private addresses (a local setup); "
                    "link-local, multicast, reserved and unspecified ones stay refused")
    key_hash_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MLP_KEY_HASH_SECRET", "key_hash_secret"),
        description="the server secret API keys are hashed with (HMAC-SHA256), at least "
                    f"{MIN_KEY_HASH_SECRET_CHARS} characters; default: one generated once "
                    "in <data_dir>/key-hash-secret. Every API process and `mlpctl keys "
                    "create` of one deployment must see the same secret")

    @field_validator("key_hash_secret", "redis_sentinel_master", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return blank_is_none(value)

    @field_validator("key_hash_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_KEY_HASH_SECRET_CHARS:
            raise ValueError(
                f"must be at least {MIN_KEY_HASH_SECRET_CHARS} characters; make one with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Self:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir.resolve() / 'mlp.db'}"
        if self.artifacts_url is None:
            self.artifacts_url = str(self.data_dir.resolve() / "artifacts")
        _check_artifacts_url(self.artifacts_url)
        if not self.database_url.startswith(("sqlite", "postgres")):
            raise ValueError("DATABASE_URL must start with sqlite:// or postgresql://")
        if self.redis_url is not None and not self.redis_url.startswith(
                ("redis://", "rediss://", "unix://", "sentinel://")):
            raise ValueError("REDIS_URL must start with redis://, rediss://, unix:// or "
                             "sentinel://")
        if self.redis_url is not None:
            self.redis_url = with_sentinel_master(self.redis_url, self.redis_sentinel_master)
        elif self.redis_sentinel_master:
            raise ValueError("MLP_REDIS_SENTINEL_MASTER is set, but REDIS_URL is not: set "
                             "REDIS_URL=sentinel://host1:26379;sentinel://host2:26379/0")
        return self

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the environment (and `overrides`); raise ConfigError naming the variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(cls, exc)) from None

    def limits(self) -> Limits:
        return Limits(
            max_parameters=self.max_parameters,
            max_epochs=self.max_epochs,
            max_hidden_layers=self.max_hidden_layers,
            max_hidden_width=self.max_hidden_width,
            max_inline_rows=self.max_inline_rows,
            max_runtime_s=self.max_runtime_s,
        )


def _check_artifacts_url(url: str) -> None:
    """An s3:// store needs a bucket and s3fs, found out at start-up rather than at the
    first upload."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("s3", "s3a"):
        return
    if not rest.split("/", 1)[0]:
        raise ValueError("MLP_ARTIFACTS_URL: an s3:// URL names a bucket: s3://bucket/prefix")
    if importlib.util.find_spec("s3fs") is None:
        raise ValueError("MLP_ARTIFACTS_URL: s3:// needs the s3fs package: "
                         "pip install 'mlp-training-service[s3]'")


def default_job_memory_bytes() -> int:
    """Half the physical memory of the machine that reads the settings (the API and the
    workers of one host agree; set MLP_MAX_JOB_MEMORY_BYTES where they do not)."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 1024 * MiB
    return max(16 * MiB, total // 2)


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable a field is read from (its first alias)."""
    info = settings_cls.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return field.upper()


def blank_is_none(value: Any) -> Any:
    """An optional setting given as an empty string (`MLP_API_KEY=`, or a compose file's
    `${VAR:-}`) is unset."""
    return None if isinstance(value, str) and not value.strip() else value


def _field_named(settings_cls: type[BaseSettings], loc: str) -> str | None:
    """The field an error location names: the field itself or one of its aliases."""
    if loc in settings_cls.model_fields:
        return loc
    for field, info in settings_cls.model_fields.items():
        choices = getattr(info.validation_alias, "choices", None) or ()
        if any(str(c).lower() == loc.lower() for c in choices):
            return field
    return None


def _is_secret(settings_cls: type[BaseSettings], field: str | None) -> bool:
    info = settings_cls.model_fields.get(field) if field else None
    if info is None:
        return True  # not ours to judge: say nothing about the value
    return SecretStr in (info.annotation, *get_args(info.annotation))


def describe_validation_error(settings_cls: type[BaseSettings], exc: ValidationError) -> str:
    """One line naming each bad variable and the rule it breaks; the value given is shown
    only for settings that are not secrets."""
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if loc:
            field = _field_named(settings_cls, loc[0])
            name = env_name(settings_cls, field) if field else loc[0].upper()
            if _is_secret(settings_cls, field):
                problems.append(f"{name}: {msg}")
            else:
                problems.append(f"{name}: {msg} (got {err.get('input')!r})")
        else:
            problems.append(msg)
    return "bad configuration: " + "; ".join(problems)
