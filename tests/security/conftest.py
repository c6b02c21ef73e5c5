"""Security-test fixtures: the API as a real process (uvicorn) on its own Redis server and
a fresh database, with no worker (jobs stay queued unless a test finishes them itself),
API keys of fresh tenants, and a job made to look trained (real weights, finished through
the store functions, as a worker would).

Keys made in this process are hashed with the secret the API process uses: the one in the
stack's data directory (`use_the_apis_key_secret`). The shared stack allows many failed
authentications a minute (its tests send bad keys on purpose); the throttle is tested on a
stack of its own, with the default."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.procs import Stack, make_stack, tiny_spec

MAX_UPLOAD = 1024 * 1024
API_ENV = {
    "MLP_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "MLP_MAX_REQUEST_BYTES": str(256 * 1024),
    "MLP_MAX_ACTIVE_JOBS_PER_TENANT": "100000",
    "MLP_RECONCILE_INTERVAL_S": "0",
    "MLP_AUTH_FAILURES_PER_MINUTE": "1000000",
}


def use_the_apis_key_secret(stack: Stack) -> None:
    """Make `stack.new_key()` (keys made in this process) hash keys as the stack's API does:
    with MLP_KEY_HASH_SECRET if its environment sets one, else the data directory's."""
    from store.keys import bind_key_hasher, load_key_hasher

    bind_key_hasher(stack.session_factory, load_key_hasher(
        secret=stack.env.get("MLP_KEY_HASH_SECRET"), data_dir=stack.env["MLP_DATA_DIR"]))


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with make_stack(tmp_path_factory.mktemp("security"), **API_ENV) as stack:
        stack.start_api()
        use_the_apis_key_secret(stack)
        yield stack


@pytest.fixture
def key(api: Stack) -> str:
    return api.new_key()


@pytest.fixture
def other_key(api: Stack) -> str:
    return api.new_key()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Weights files of one real (tiny) training run."""
    from mlp_engine import JobSpec, export_state_dict, fit, save_model

    result = fit(JobSpec.model_validate(tiny_spec("trained", epochs=2)), num_threads=1)
    directory = tmp_path_factory.mktemp("trained")
    return {"weights": save_model(directory / "w.safetensors", result),
            "pt": export_state_dict(directory / "w.pt", result.model),
            "history": [dict(r) for r in result.history]}


def make_succeeded_job(api: Stack, key: str, trained: dict[str, Any]) -> str:
    """A job created over HTTP, then claimed, recorded and finished the way a worker does."""
    from store.artifacts import ArtifactStore
    from store.jobs import claim_job, finish_job, record_epochs

    with api.http(key) as client:
        r = client.post("/v1/jobs", json=tiny_spec(f"done-{uuid.uuid4().hex[:6]}", epochs=2))
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
    store = ArtifactStore(api.env["MLP_ARTIFACTS_URL"])
    n, sha = store.put_file(f"jobs/{job_id}/weights.safetensors", Path(trained["weights"]))
    pn, psha = store.put_file(f"jobs/{job_id}/weights.pt", Path(trained["pt"]))
    with api.session_factory() as session:
        assert claim_job(session, job_id, worker_id="security-test", lease_s=60) is not None
        record_epochs(session, job_id, trained["history"])
        assert finish_job(session, job_id, "succeeded", weights={
            "uri": f"jobs/{job_id}/weights.safetensors", "bytes": n, "sha256": sha,
            "pt_uri": f"jobs/{job_id}/weights.pt", "pt_bytes": pn, "pt_sha256": psha})
    return str(job_id)
