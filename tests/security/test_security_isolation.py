"""Secure defaults, against the API process: auth on by default on every /v1 route, keys
stored hashed and compared in constant time, another tenant's object is 404 on every route
(the routes are read from the served OpenAPI schema, so a new route is covered or fails
here), no stack trace in any answer, nothing unpickled, a non-root Docker image."""

from __future__ import annotations

import ast
import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.procs import REPO, Stack, tiny_spec
from tests.security.conftest import make_succeeded_job

pytestmark = pytest.mark.slow

TRACE = re.compile(r"Traceback|File \"[^\"]+\", line \d+|\w+Error: |sqlalchemy|psycopg")


def operations(api: Stack) -> list[tuple[str, str, dict[str, Any]]]:
    schema = httpx.get(f"{api.base_url}/openapi.json").json()
    return [(method.upper(), path, op) for path, ops in schema["paths"].items()
            for method, op in ops.items()]


def fill(path: str, job_id: str, owner: dict[str, Any]) -> str:
    """A route's path with the owner's objects (this job, and its dataset, webhook and
    sweep)."""
    plot = "objective" if path.startswith("/v1/sweeps/") else "loss"  # one each has
    return (path.replace("{job_id}", job_id).replace("{dataset_id}", owner["dataset"])
            .replace("{webhook_id}", owner["webhook"]).replace("{sweep_id}", owner["sweep"])
            .replace("{name}", plot).replace("{format}", "svg"))


def request_for(method: str, path: str) -> dict[str, Any]:
    """A plausible, valid request body for each route that takes one."""
    if path.endswith("/predict"):
        return {"json": {"x": [[0.1, 0.2, 0.3]]}}
    if path in ("/v1/jobs", "/v1/specs/validate"):
        return {"json": tiny_spec("isolation")}
    if path == "/v1/datasets" and method == "POST":
        csv = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(10))
        return {"files": {"file": ("d.csv", csv.encode())}}
    return {}


@pytest.fixture(scope="module")
def owner(api: Stack, trained: dict) -> dict[str, Any]:
    """Tenant A with a succeeded job, a queued job and a dataset (with a name to look for)."""
    key = api.new_key(f"owner-{uuid.uuid4().hex[:6]}")
    job_id = make_succeeded_job(api, key, trained)
    with api.http(key) as client:
        queued = client.post("/v1/jobs", json=tiny_spec("owner-secret-queued")).json()["id"]
        csv = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(10))
        ds = client.post("/v1/datasets", files={"file": ("secret.csv", csv.encode())},
                         data={"name": "owner-secret-dataset"}).json()
        # an address literal: public, and no DNS needed (nothing is sent in this test)
        hook = client.post("/v1/webhooks", json={"url": "https://93.184.215.14/owner-secret",
                                                 "events": ["job.succeeded"]})
        assert hook.status_code == 201, hook.text
        sweep = client.post("/v1/sweeps", json={
            "name": "owner-secret-sweep", "base": tiny_spec("owner-secret-trial", epochs=1),
            "space": {"optimizer.lr": {"choice": [0.01]}}, "strategy": "grid",
            "objective": {"metric": "train_loss", "mode": "min"}})
        assert sweep.status_code == 201, sweep.text
    return {"key": key, "job": job_id, "queued": queued, "dataset": ds["id"],
            "sha256": ds["sha256"], "webhook": hook.json()["id"], "sweep": sweep.json()["id"]}


# --------------------------------------------------------------------------- tenants


def test_another_tenants_objects_are_404_on_every_route(api: Stack, owner: dict[str, Any],
                                                        other_key: str) -> None:
    ops = [(m, p) for m, p, _ in operations(api) if "{" in p]
    assert len(ops) >= 10, ops  # every route with an id, as served
    covered = set()
    with api.http(other_key) as intruder, api.http(owner["key"]) as own:
        for method, path in ops:
            for job in (owner["job"], owner["queued"]):
                url = fill(path, job, owner)
                r = intruder.request(method, url, **request_for(method, path))
                assert r.status_code == 404, (method, url, r.status_code, r.text[:300])
                for secret in ("owner-secret", owner["sha256"], "done-"):
                    assert secret not in r.text, (method, url, r.text)
                assert not TRACE.search(r.text), r.text
                covered.add((method, path))
        # nothing the intruder did changed anything, and the owner still reaches it all
        for method, path in ops:
            if method in ("GET",) and not path.endswith("/events"):
                url = fill(path, owner["job"], owner)
                assert own.get(url).status_code == 200, url
        assert own.get(f"/v1/jobs/{owner['queued']}").json()["status"] == "queued"
    assert covered == set(ops)


def test_another_tenants_objects_never_show_in_lists_or_jobs(api: Stack, owner: dict[str, Any],
                                                             other_key: str) -> None:
    with api.http(other_key) as intruder:
        for path, params in (("/v1/jobs", {}), ("/v1/jobs", {"name": "owner-secret-queued"}),
                             ("/v1/jobs", {"status": "succeeded"}), ("/v1/datasets", {})):
            r = intruder.get(path, params=params)
            assert r.status_code == 200
            ids = {item["id"] for item in r.json()["items"]}
            assert not ids & {owner["job"], owner["queued"], owner["dataset"]}
        # training on another tenant's dataset is refused like a dataset that does not exist
        spec = {**tiny_spec("steal"), "dataset": {"id": owner["dataset"]}}
        for path in ("/v1/jobs", "/v1/specs/validate"):
            r = intruder.post(path, json=spec)
            assert r.status_code in (404, 422), r.text
            assert "owner-secret" not in r.text and owner["sha256"] not in r.text
        # an Idempotency-Key the owner used means nothing for another tenant
        with api.http(owner["key"]) as own:
            first = own.post("/v1/jobs", json=tiny_spec("idem"),
                             headers={"Idempotency-Key": "shared-key"}).json()["id"]
        r = intruder.post("/v1/jobs", json=tiny_spec("idem"),
                          headers={"Idempotency-Key": "shared-key"})
        assert r.status_code == 201 and r.json()["id"] != first


# --------------------------------------------------------------------------- auth


BAD_AUTH = [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer a b",
            "Bearer mlp_not-a-real-key-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "bearer" + " x" * 300,
            "Bearer " + "k" * 10_000]


def test_every_v1_route_needs_a_valid_key(api: Stack, owner: dict[str, Any]) -> None:
    ops = [(m, p) for m, p, _ in operations(api) if p.startswith("/v1")]
    assert len(ops) >= 15
    with api.http() as anon:
        for method, path in ops:
            url = fill(path, owner["job"], owner)
            for header in BAD_AUTH:
                headers = {} if header is None else {"Authorization": header}
                r = anon.request(method, url, headers=headers, **request_for(method, path))
                assert r.status_code == 401, (method, url, header, r.status_code)
                assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
                assert "owner-secret" not in r.text and not TRACE.search(r.text)
    # the probes are public: liveness, readiness, metrics, the schema
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(api.base_url + path).status_code == 200


def test_auth_is_on_by_default_and_a_revoked_key_is_refused(api: Stack) -> None:
    from service.settings import Settings

    assert Settings.model_fields["auth"].default is True
    assert "MLP_AUTH" not in api.env  # the API under test runs with the defaults
    key = api.new_key()
    with api.http(key) as client:
        assert client.get("/v1/jobs").status_code == 200
    from store.keys import hasher_for
    from store.models import ApiKey

    with api.session_factory() as session:
        row = session.query(ApiKey).filter_by(key_hash=hasher_for(session).digest(key)).one()
        row.revoked = True
        session.commit()
    with api.http(key) as client:
        assert client.get("/v1/jobs").status_code == 401


def test_keys_are_stored_only_as_a_keyed_hash(api: Stack) -> None:
    """HMAC-SHA256 under the server secret (a 0600 file in the data directory here): the
    database holds neither the key nor its plain sha256, which a copy of it could test
    guesses against."""
    import hmac
    import stat

    from sqlalchemy import text

    from store.keys import SECRET_FILE

    key = api.new_key("hashed")
    assert re.fullmatch(r"mlp_[A-Za-z0-9_-]{43}", key)
    with api.session_factory() as session:
        dump = "\n".join(str(tuple(row)) for table in ("api_keys", "tenants")
                         for row in session.execute(text(f"SELECT * FROM {table}")))
    assert key not in dump and key[4:] not in dump
    assert hashlib.sha256(key.encode()).hexdigest() not in dump
    secret_file = Path(api.env["MLP_DATA_DIR"]) / SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip().encode()
    assert hmac.new(secret, key.encode(), hashlib.sha256).hexdigest() in dump
    # at most a short prefix is kept, to recognise a key in a list: 8 of its 43 characters
    assert key[:13] not in dump


def test_keys_are_compared_in_constant_time() -> None:
    """Looking a key up by its keyed hash (an index lookup on a hash the caller cannot
    steer) and then hmac.compare_digest: no early exit on the first wrong character."""
    import inspect

    from store import keys

    source = inspect.getsource(keys._find_key)
    assert "hasher.digest(key)" in source and "hmac.compare_digest" in source
    for function in (keys._find_key, keys.tenant_for_key, keys.ensure_default_key):
        source = inspect.getsource(function)
        assert "== key" not in source and "key ==" not in source


# --------------------------------------------------------------------------- no traces


def test_a_broken_artifact_answers_without_a_stack_trace(api: Stack, key: str,
                                                         trained: dict) -> None:
    """Weights gone from the artifact store behind the API's back: a JSON error, no trace."""
    job_id = make_succeeded_job(api, key, trained)
    for name in ("weights.safetensors", "weights.pt"):
        (Path(api.env["MLP_ARTIFACTS_URL"]) / "jobs" / job_id / name).unlink()
    with api.http(key) as client:
        for method, url, kwargs in (
                ("GET", f"/v1/jobs/{job_id}/weights", {}),
                ("GET", f"/v1/jobs/{job_id}/weights?format=pt", {}),
                ("GET", f"/v1/jobs/{job_id}/model", {}),
                ("POST", f"/v1/jobs/{job_id}/predict", {"json": {"x": [[0.1, 0.2, 0.3]]}})):
            r = client.request(method, url, **kwargs)
            assert r.status_code != 200, (url, r.status_code)
            assert r.headers["content-type"].startswith("application/json"), (url, r.text)
            assert r.json().get("message"), (url, r.text)
            assert not TRACE.search(r.text), (url, r.text)


def test_redis_down_answers_503_without_a_trace_and_keeps_the_job(api: Stack,
                                                                  key: str) -> None:
    api.redis.kill()
    try:
        with api.http(key) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "redis" in ready.text.lower()
            r = client.post("/v1/jobs", json=tiny_spec("redis-down"))
            assert r.status_code == 503, r.text
            assert not TRACE.search(r.text) and r.json().get("message")
            location = r.headers["location"]
            assert client.get(location).json()["status"] == "queued"  # stored, not lost
    finally:
        api.redis.start()
    with api.http(key) as client:
        assert client.get("/readyz").status_code == 200


# --------------------------------------------------------------------------- static


def _python_files() -> list[Path]:
    return [p for pkg in ("mlp_engine", "service", "store", "worker", "mlpctl")
            for p in (REPO / pkg).rglob("*.py")]


def test_nothing_the_service_reads_is_ever_unpickled() -> None:
    """No pickle, no torch.load without weights_only=True, no numpy load with pickles."""
    problems = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                if "pickle" in names or "dill" in names or module in ("pickle", "dill"):
                    problems.append(f"{path}:{node.lineno} imports pickle")
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") and kwargs.get("weights_only") != "True":
                problems.append(f"{path}:{node.lineno} torch.load without weights_only=True")
            if name.endswith(("np.load", "numpy.load", "read_array")) and \
                    kwargs.get("allow_pickle") != "False":
                problems.append(f"{path}:{node.lineno} {name} without allow_pickle=False")
            if name.endswith(("pd.read_pickle", "pandas.read_pickle", "joblib.load")):
                problems.append(f"{path}:{node.lineno} {name}")
    assert not problems, problems


def test_the_docker_image_runs_as_a_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = re.split(r"(?im)^FROM\s", dockerfile)
    final = stages[-1]
    users = re.findall(r"(?im)^USER\s+(\S+)", final)
    assert users, "the final stage of the Dockerfile sets no USER (it would run as root)"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
