from __future__ import annotations

import pytest

from store.db import normalize_url
from store.settings import CommonSettings, ConfigError


def test_defaults_follow_the_data_dir(monkeypatch, tmp_path):
    for var in ("DATABASE_URL", "REDIS_URL", "MLP_ARTIFACTS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path))
    s = CommonSettings.load()
    assert s.database_url == f"sqlite:///{tmp_path.resolve()}/mlp.db"
    assert s.artifacts_url == str(tmp_path.resolve() / "artifacts")
    assert s.redis_url is None
    assert s.max_attempts == 3 and s.lease_seconds == 60
    assert s.max_upload_bytes == 100 * 1024 * 1024


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLP_MAX_EPOCHS", "7")
    monkeypatch.setenv("MLP_MAX_PARAMETERS", "1000")
    limits = CommonSettings.load().limits()
    assert limits.max_epochs == 7 and limits.max_parameters == 1000


@pytest.mark.parametrize(("var", "value"), [
    ("MLP_MAX_EPOCHS", "many"),
    ("MLP_MAX_ATTEMPTS", "0"),
    ("MLP_LEASE_SECONDS", "-1"),
    ("DATABASE_URL", "mysql://x/y"),
    ("REDIS_URL", "http://x"),
])
def test_bad_values_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        CommonSettings.load()


def test_normalize_url():
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_key_hash_secret_is_checked_and_never_shown(monkeypatch):
    monkeypatch.setenv("MLP_KEY_HASH_SECRET", "Xq9-short-secret")
    with pytest.raises(ConfigError, match="MLP_KEY_HASH_SECRET") as info:
        CommonSettings.load()
    assert "Xq9-short-secret" not in str(info.value) and "32 characters" in str(info.value)
    good = "G" * 40
    monkeypatch.setenv("MLP_KEY_HASH_SECRET", good)
    settings = CommonSettings.load()
    assert settings.key_hash_secret.get_secret_value() == good
    assert good not in repr(settings) and good not in str(settings.model_dump())
    monkeypatch.setenv("MLP_KEY_HASH_SECRET", "")  # `${VAR:-}` in a compose file: unset
    assert CommonSettings.load().key_hash_secret is None


def test_the_value_is_shown_only_for_settings_that_are_not_secrets(monkeypatch):
    monkeypatch.setenv("MLP_MAX_EPOCHS", "many")
    monkeypatch.setenv("MLP_KEY_HASH_SECRET", "Zt4-also-too-short")
    with pytest.raises(ConfigError) as info:
        CommonSettings.load()
    message = str(info.value)
    assert "MLP_MAX_EPOCHS" in message and "'many'" in message
    assert "MLP_KEY_HASH_SECRET" in message and "Zt4-also-too-short" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
