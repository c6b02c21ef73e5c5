"""Store fixtures: a real S3 protocol server (moto's, in a subprocess; see tests/s3_server.py)
with a bucket of this run's own, and a fresh prefix of it per test.

- `s3_server`: the running server, one per pytest process (started only when a test asks).
- `s3_bucket`: a bucket made for this run, emptied and removed at its end.
- `s3_env`: the test's environment pointed at the server (`AWS_ENDPOINT_URL`, test
  credentials, no AWS files of this machine).
- `s3_url`: `s3://<bucket>/<fresh prefix>` for an `ArtifactStore` or `MLP_ARTIFACTS_URL`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.s3_server import MotoServer


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: MotoServer) -> Iterator[str]:
    name = f"mlp-test-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    try:
        yield name
    finally:
        s3_server.delete_bucket(name)


@pytest.fixture
def s3_env(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_url(s3_bucket: str, s3_env: dict[str, str]) -> str:
    return f"s3://{s3_bucket}/t-{uuid.uuid4().hex[:10]}"
