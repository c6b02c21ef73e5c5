"""Service fixtures: the app in-process (Starlette's TestClient, lifespan included) on real
Redis and a real database, API keys of fresh tenants, and a job that really succeeded
(trained with mlp_engine.fit in the test, stored through the store functions).

Modules run on SQLite and PostgreSQL with `pytestmark = BOTH_BACKENDS`; apps with special
settings (tiny limits, Redis down) use `make_app`, on a SQLite file of their own.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

BOTH_BACKENDS = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"],
                                        indirect=True)
CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
SMALL_UPLOAD = 64 * 1024


@dataclass
class Harness:
    client: TestClient
    settings: Any

    @property
    def services(self) -> Any:
        return self.client.app.state.services  # type: ignore[attr-defined]

    def new_key(self, tenant: str | None = None) -> str:
        from store.keys import create_api_key

        with self.services.session_factory() as session:
            return create_api_key(session, tenant or f"t-{uuid.uuid4().hex[:10]}")

    def auth(self, tenant: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.new_key(tenant)}"}


def _settings(data_dir: Path, database_url: str, redis_url: str, **overrides: Any) -> Any:
    from service.settings import Settings

    values: dict[str, Any] = {
        "data_dir": data_dir, "database_url": database_url, "redis_url": redis_url,
        "artifacts_url": str(data_dir / "artifacts"), "reconcile_interval_s": 0,
        "rate_limit_per_minute": 0, "sse_poll_s": 0.2, "sse_heartbeat_s": 0.5,
        "max_upload_bytes": SMALL_UPLOAD,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def harness(database_url: str, redis_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    from service.app import create_app

    data_dir = tmp_path_factory.mktemp("service")
    settings = _settings(data_dir, database_url, redis_url)
    with TestClient(create_app(settings)) as client:
        yield Harness(client=client, settings=settings)


@pytest.fixture
def client(harness: Harness) -> TestClient:
    return harness.client


@pytest.fixture
def auth(harness: Harness) -> dict[str, str]:
    """Headers with the API key of a fresh tenant."""
    return harness.auth()


@pytest.fixture
def other_auth(harness: Harness) -> dict[str, str]:
    """Headers of a second fresh tenant."""
    return harness.auth()


@pytest.fixture
def make_app(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Harness]]:
    """Start an app with settings overrides on its own SQLite file; stopped at the end."""
    from service.app import create_app

    stack = contextlib.ExitStack()

    def make(**overrides: Any) -> Harness:
        data_dir = tmp_path / f"app-{uuid.uuid4().hex[:6]}"
        url = overrides.pop("database_url", f"sqlite:///{data_dir / 'mlp.db'}")
        raise_exc = overrides.pop("raise_server_exceptions", True)
        settings = _settings(data_dir, url, overrides.pop("redis_url", redis_url),
                             **overrides)
        client = stack.enter_context(TestClient(create_app(settings),
                                                raise_server_exceptions=raise_exc))
        return Harness(client=client, settings=settings)

    with stack:
        yield make


# --------------------------------------------------------------------------- data


def csv_bytes(rows: int = 30, *, labels: tuple[Any, ...] = ("a", "b", "c")) -> bytes:
    out = io.StringIO()
    out.write("f1,f2,f3,label\n")
    for i in range(rows):
        out.write(f"{i * 0.1:.2f},{(i % 7) * 1.5:.2f},{(i * 37 % 11) / 3:.3f},"
                  f"{labels[i % len(labels)]}\n")
    return out.getvalue().encode()


def npz_bytes(rows: int = 30, features: int = 4) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(rows, features)), y=np.arange(rows) % 2)
    return buf.getvalue()


def parquet_bytes(rows: int = 30) -> bytes:
    import pandas as pd

    frame = pd.DataFrame({"a": [float(i) for i in range(rows)],
                          "b": [float(i % 5) for i in range(rows)],
                          "y": [float(i) * 0.5 + 1 for i in range(rows)]})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    return buf.getvalue()


def upload(client: TestClient, headers: dict[str, str], content: bytes, *,
           filename: str = "data.csv", **fields: str) -> Any:
    return client.post("/v1/datasets", headers=headers,
                       files={"file": (filename, content, "application/octet-stream")},
                       data=fields)


# --------------------------------------------------------------------------- a trained job

# inline data (four features, classes 0, 1, 2), so that training needs no scikit-learn
_X = [[(i * 7 % 10) / 10, (i * 3 % 10) / 10, (i % 4) / 4, (i % 5) / 5] for i in range(30)]
_Y = [(i * 7 % 10) // 4 for i in range(30)]
SMALL_SPEC = {"name": "small", "dataset": {"inline": {"x": _X, "y": _Y}},
              "model": {"hidden_dims": [8]}, "training": {"epochs": 3, "batch_size": 8},
              "device": "cpu"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real training run (30 inline rows, 3 epochs) and its weights files, shared by the
    tests."""
    from mlp_engine import JobSpec, export_state_dict, fit, save_model

    result = fit(JobSpec.model_validate(SMALL_SPEC))
    directory = tmp_path_factory.mktemp("trained")
    weights = save_model(directory / "weights.safetensors", result)
    state = export_state_dict(directory / "weights.pt", result)
    return {"result": result, "weights": weights, "pt": state,
            "history": [dict(r) for r in result.history]}


def store_succeeded_job(harness: Harness, headers: dict[str, str],
                        trained: dict[str, Any]) -> str:
    """Create a job through the API, then do what a worker does: claim it, record its
    epochs, store its weights and finish it as succeeded. Returns the job id."""
    from store.jobs import claim_job, finish_job, record_epochs

    r = harness.client.post("/v1/jobs", headers=headers, json=SMALL_SPEC)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    services = harness.services
    artifacts = services.artifacts
    n, sha = artifacts.put_file(f"jobs/{job_id}/weights.safetensors", trained["weights"])
    pn, psha = artifacts.put_file(f"jobs/{job_id}/weights.pt", trained["pt"])
    with services.session_factory() as session:
        assert claim_job(session, job_id, worker_id="test-worker", lease_s=60) is not None
        record_epochs(session, job_id, trained["history"])
        assert finish_job(session, job_id, "succeeded", weights={
            "uri": f"jobs/{job_id}/weights.safetensors", "bytes": n, "sha256": sha,
            "pt_uri": f"jobs/{job_id}/weights.pt", "pt_bytes": pn, "pt_sha256": psha})
    return job_id
