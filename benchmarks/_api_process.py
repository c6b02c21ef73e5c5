"""`mlpctl api` as a process of its own for the service benchmarks: SQLite in a temporary
directory, the Redis of REDIS_URL (default redis://127.0.0.1:6379/15), no rate limit."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

__all__ = ["ApiProcess", "running_api"]


@dataclass
class ApiProcess:
    url: str
    port: int
    key: str  # of tenant "default"
    env: dict[str, str]
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_api(**settings: str) -> Iterator[ApiProcess]:
    """Start `mlpctl api` with these MLP_* settings, wait until it is ready, stop it at the
    end."""
    key = "mlp_" + secrets.token_urlsafe(24)
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLP_DATA_DIR": tmp, "MLP_API_KEY": key,
               "DATABASE_URL": f"sqlite:///{tmp}/mlp.db",
               "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
               "MLP_RATE_LIMIT_PER_MINUTE": "0", "MLP_RECONCILE_INTERVAL_S": "0", **settings}
        process = subprocess.Popen([sys.executable, "-m", "mlpctl", "api", "--port",
                                    str(port), "--log-level", "warning"], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            else:
                raise RuntimeError("mlpctl api did not become ready within 60 s")
            yield ApiProcess(url=url, port=port, key=key, env=env, process=process)
        finally:
            process.terminate()
            process.wait(30)
