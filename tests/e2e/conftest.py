"""The whole stack as real processes: `mlpctl api` and `mlpctl worker` (a real Celery
worker) against the test Redis, the test database and a data directory of their own.

`stack` is started once per test module; `tenant` makes a fresh tenant with a key made by
`mlpctl keys create`, so tests never see each other's jobs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlpctl.sdk import Client
from mlpctl.standalone import Child, spawn, stop_children, wait_http_ok

SERVICE_ENV = ("MLP_", "DATABASE_URL", "REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlpctl_argv() -> list[str]:
    """The installed `mlpctl` console script, or `python -m mlpctl` from a bare checkout."""
    script = shutil.which("mlpctl", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "mlpctl"]


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any service setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_ENV)}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def mlpctl() -> list[str]:
    return mlpctl_argv()


@pytest.fixture(scope="session")
def newcomer_env() -> dict[str, str]:
    """The environment of someone who has configured nothing."""
    return clean_env()


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    return free_port()


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    data_dir: Path
    children: list[Child] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} (pid {c.pid}) ---\n{c.log_tail(40)}"
                         for c in self.children)

    def create_key(self, tenant: str) -> str:
        """A new API key, made the way an operator makes one: `mlpctl keys create`."""
        done = subprocess.run([*mlpctl_argv(), "keys", "create", "--tenant", tenant],
                              env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def client(self, key: str | None) -> Client:
        return Client(self.base_url, api_key=key or "", timeout=60)


# module scope: no worker of this stack may outlive the module and take the jobs of the
# next module's processes, which share the session's Redis and database
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
          database_url: str) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    data_dir.mkdir()
    port = free_port()
    env = clean_env(MLP_DATA_DIR=str(data_dir), DATABASE_URL=database_url,
                    REDIS_URL=redis_url, MLP_ARTIFACTS_URL=str(data_dir / "artifacts"),
                    MLP_RATE_LIMIT_PER_MINUTE="0", MLP_WORKER_THREADS="1")
    stack = Stack(f"http://127.0.0.1:{port}", env, data_dir)
    logs = data_dir.parent / "logs"
    cli = mlpctl_argv()
    try:
        stack.children.append(spawn(
            "api", [*cli, "api", "--host", "127.0.0.1", "--port", str(port)], env=env,
            log_path=logs / "api.log"))
        stack.children.append(spawn(
            "worker", [*cli, "worker", "--queues", "cpu", "--concurrency", "1",
                       "--hostname", f"e2e-{uuid.uuid4().hex[:8]}@%h"],
            env=env, log_path=logs / "worker.log",
            stop_signals=(signal.SIGTERM, signal.SIGQUIT)))
        api = stack.children[0]
        ok, last = wait_http_ok(f"{stack.base_url}/readyz", timeout=60, alive=api.alive)
        assert ok, f"the API did not get ready ({last})\n{stack.logs()}"
        yield stack
    finally:
        stop_children(stack.children, step_timeout=10)
        print(stack.logs())


@dataclass
class Tenant:
    name: str
    key: str
    client: Client


@pytest.fixture
def tenant(stack: Stack) -> Iterator[Tenant]:
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    key = stack.create_key(name)
    with stack.client(key) as client:
        yield Tenant(name, key, client)


@pytest.fixture
def other_tenant(stack: Stack) -> Iterator[Tenant]:
    name = f"e2e-other-{uuid.uuid4().hex[:10]}"
    key = stack.create_key(name)
    with stack.client(key) as client:
        yield Tenant(name, key, client)
