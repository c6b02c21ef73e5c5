"""`mlpctl api` as a process of its own for the service benchmarks: SQLite in a temporary
directory, the Redis of REDIS_URL (default redis://127.0.0.1:6379/15), no rate limit."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

__all__ = ["ApiProcess", "running_api", "running_standalone"]


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


@contextlib.contextmanager
def running_standalone(**settings: str) -> Iterator[tuple[str, str]]:
    """`mlpctl standalone` (API, one worker on one torch thread, embedded Redis, SQLite) in
    a temporary data directory, with these MLP_* settings: (its URL, the API key it
    printed). Stopped at the end."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "DATABASE_URL", "MLP_API_KEY")}
        env.update({"MLP_WORKER_THREADS": "1", **settings})
        proc = subprocess.Popen([sys.executable, "-m", "mlpctl", "standalone", "--port",
                                 str(port), "--data-dir", data_dir], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            key = None
            assert proc.stdout is not None
            for line in proc.stdout:
                found = re.search(r"\b(mlp_[A-Za-z0-9_-]{20,})", line)
                key = key or (found.group(1) if found else None)
                if "Press Ctrl-C" in line:
                    break
            if key is None:
                raise RuntimeError("mlpctl standalone did not print an API key")
            # keep reading its output, so that a full pipe never blocks it
            out = proc.stdout
            threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
            yield f"http://127.0.0.1:{port}", key
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
