"""Authentication against the real API process: failed authentications are throttled per
client address (the TCP peer: connections come from 127.0.0.2, 127.0.0.3, ... which
Linux routes to the loopback), X-Forwarded-For from a client is not believed, legacy sha256
key rows are accepted and upgraded, and a short MLP_API_KEY stops `mlpctl api` without the
key appearing in what it prints."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.procs import Stack, base_env, free_port, make_stack
from tests.security.conftest import use_the_apis_key_secret

pytestmark = pytest.mark.slow

BUDGET = 5
WRONG = {"Authorization": "Bearer mlp_wrong-key-00000000000000000000000000000000000000"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with make_stack(tmp_path_factory.mktemp("auth"), MLP_RECONCILE_INTERVAL_S="0",
                    MLP_AUTH_FAILURES_PER_MINUTE=str(BUDGET)) as stack:
        stack.start_api()
        use_the_apis_key_secret(stack)
        yield stack


def client_from(stack: Stack, address: str) -> httpx.Client:
    """A client whose connections leave from `address` (the server sees it as the peer)."""
    return httpx.Client(base_url=stack.base_url, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address))


def test_a_burst_of_bad_keys_is_throttled_for_its_address_only(stack: Stack) -> None:
    key = stack.new_key()
    good = {"Authorization": f"Bearer {key}"}
    with client_from(stack, "127.0.0.2") as attacker, \
            client_from(stack, "127.0.0.3") as bystander:
        codes = [attacker.get("/v1/jobs", headers=WRONG).status_code for _ in range(BUDGET)]
        assert codes == [401] * BUDGET
        r = attacker.get("/v1/jobs", headers=WRONG)
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 61
        assert "MLP_AUTH_FAILURES_PER_MINUTE" in r.json()["message"]
        # from that address even the right key waits: a hit must look like a miss
        assert attacker.get("/v1/jobs", headers=good).status_code == 429
        assert attacker.get("/healthz").status_code == 200

        # another address: its valid key works at once, its wrong key is a plain 401
        assert bystander.get("/v1/jobs", headers=good).status_code == 200
        assert bystander.get("/v1/jobs", headers=WRONG).status_code == 401
        for _ in range(20):  # the attacker keeps trying; the bystander is not slowed
            assert attacker.get("/v1/jobs", headers=WRONG).status_code == 429
            assert bystander.get("/v1/jobs", headers=good).status_code == 200

        metrics = bystander.get("/metrics").text
    failures = _sample(metrics, 'mlp_auth_failures_total{reason="unknown"}')
    assert failures >= BUDGET + 1
    assert _sample(metrics, "mlp_auth_throttled_total") >= 22


def test_x_forwarded_for_from_a_client_is_not_believed(stack: Stack) -> None:
    """A client cannot spread its failures over made-up addresses."""
    with client_from(stack, "127.0.0.4") as attacker:
        codes = [attacker.get("/v1/jobs", headers={
            **WRONG, "X-Forwarded-For": f"198.51.100.{i}", "X-Real-IP": f"203.0.113.{i}"}
        ).status_code for i in range(BUDGET + 3)]
    assert codes == [401] * BUDGET + [429] * 3


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_legacy_sha256_key_is_accepted_and_upgraded(stack: Stack) -> None:
    """A database from before keyed hashes: its rows hold the key's plain sha256."""
    from store.keys import SECRET_FILE, get_or_create_tenant
    from store.models import ApiKey, new_id

    key = "mlp_legacy-" + uuid.uuid4().hex
    legacy = hashlib.sha256(key.encode()).hexdigest()
    row_id = new_id("key")
    with stack.session_factory() as session:
        tenant = get_or_create_tenant(session, f"legacy-{uuid.uuid4().hex[:6]}")
        session.add(ApiKey(id=row_id, tenant_id=tenant.id, key_hash=legacy, prefix=""))
        session.commit()
    with stack.http(key) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/jobs").status_code == 200
    secret = (Path(stack.env["MLP_DATA_DIR"]) / SECRET_FILE).read_text().strip().encode()
    with stack.session_factory() as session:
        stored = session.get(ApiKey, row_id).key_hash
    assert stored == hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def test_a_short_api_key_stops_mlpctl_api_without_showing_it(stack: Stack,
                                                              tmp_path: Path) -> None:
    short = "Zx81-short-key"  # 14 characters
    data_dir = tmp_path / "data"
    env = base_env(MLP_API_KEY=short, MLP_DATA_DIR=str(data_dir),
                   DATABASE_URL=f"sqlite:///{data_dir / 'mlp.db'}",
                   REDIS_URL=stack.env["REDIS_URL"])
    result = subprocess.run(
        [sys.executable, "-m", "mlpctl", "api", "--host", "127.0.0.1",
         "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "MLP_API_KEY" in output and "at least 16 characters" in output, output
    assert short not in output
