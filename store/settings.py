"""Configuration shared by every process kind (API, worker, CLI), read from the environment.

`CommonSettings.load()` is the one place a process reads it; a bad value stops start-up with
a `ConfigError` whose message names the environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlp_engine.spec import Limits

__all__ = ["CommonSettings", "ConfigError", "env_name"]

MiB = 1024 * 1024


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the variable."""


class CommonSettings(BaseSettings):
    """Settings every process shares: where data lives and the limits on a job."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True,
        validate_default=True,
    )

    data_dir: Path = Field(default=Path("./data"),
                           validation_alias=AliasChoices("MLP_DATA_DIR", "data_dir"))
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="default sqlite:///<data_dir>/mlp.db")
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="default none: standalone mode starts an embedded Redis")
    artifacts_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MLP_ARTIFACTS_URL", "artifacts_url"),
        description="default <data_dir>/artifacts; any fsspec URL")

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

    @model_validator(mode="after")
    def _fill_defaults(self) -> Self:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir.resolve() / 'mlp.db'}"
        if self.artifacts_url is None:
            self.artifacts_url = str(self.data_dir.resolve() / "artifacts")
        if not self.database_url.startswith(("sqlite", "postgres")):
            raise ValueError("DATABASE_URL must start with sqlite:// or postgresql://")
        if self.redis_url is not None and not self.redis_url.startswith(
                ("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
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


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable a field is read from (its first alias)."""
    info = settings_cls.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return field.upper()


def describe_validation_error(settings_cls: type[BaseSettings], exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc:
            field = loc[0]
            name = field if field.isupper() else env_name(settings_cls, field)
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        else:
            problems.append(str(err["msg"]).removeprefix("Value error, "))
    return "bad configuration: " + "; ".join(problems)
