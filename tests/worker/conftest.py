"""Worker fixtures: an in-process WorkerContext, and a real Celery worker subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_settings(migrated_db, redis_url, tmp_path):
    from worker.settings import WorkerSettings

    return WorkerSettings(database_url=migrated_db, redis_url=redis_url,
                          data_dir=tmp_path, artifacts_url=str(tmp_path / "artifacts"),
                          lease_seconds=10, worker_threads=1, max_attempts=3)


@pytest.fixture
def make_ctx(worker_settings):
    from worker.runner import WorkerContext

    made = []

    def make(**overrides):
        s = worker_settings.model_copy(update=overrides)
        ctx = WorkerContext.from_settings(s)
        ctx.worker_id = f"test-{uuid.uuid4().hex[:6]}"
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.redis.close()
        ctx.session_factory.kw["bind"].dispose()


@pytest.fixture
def ctx(make_ctx):
    return make_ctx()


@pytest.fixture
def tenant_id(session_factory):
    from store.keys import get_or_create_tenant

    with session_factory() as s:
        return get_or_create_tenant(s, f"w-{uuid.uuid4().hex[:8]}").id


@pytest.fixture
def make_job(session_factory, tenant_id):
    from store import jobs

    def make(spec: dict, **kw):
        with session_factory() as s:
            job, _ = jobs.create_job(s, tenant_id=tenant_id, spec=spec, **kw)
            return job.id

    return make


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@contextlib.contextmanager
def running_celery_worker(database_url: str, redis_url: str, data_dir: Path,
                          **extra_env: str) -> Iterator[dict]:
    """`celery -A worker.celery_app worker -Q cpu -c 1 --pool prefork` as a subprocess,
    with the given Redis, database and data directory; stopped (by its own process group)
    at the end. Yields the environment it runs with, its log and its process."""
    env = {**os.environ,
           "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "MLP_DATA_DIR": str(data_dir), "MLP_ARTIFACTS_URL": str(data_dir / "artifacts"),
           "MLP_WORKER_THREADS": "1", "MLP_LEASE_SECONDS": "10",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")])),
           **extra_env}
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "cpu",
             "-c", "1", "--pool", "prefork", "--loglevel", "INFO",
             "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h", "--without-mingle",
             "--without-gossip"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_for(lambda: b"ready" in log_path.read_bytes() or proc.poll() is not None, 60,
                 0.1)
        if proc.poll() is not None:
            raise RuntimeError("the Celery worker did not start:\n" + log_path.read_text())
        yield {"env": env, "log": log_path, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: the running task finishes
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture started
                proc.wait()


def clear_queues(client) -> None:
    """Remove every message of the cpu and gpu queues, at every priority level."""
    from messaging.celery_factory import QUEUES, queue_keys

    client.delete(*[key for queue in QUEUES for key in queue_keys(queue)])


@pytest.fixture(scope="module")
def celery_worker(database_url, redis_url, tmp_path_factory):
    """A real Celery worker process for the module (see running_celery_worker)."""
    import redis

    from store.db import init_db

    init_db(database_url)
    client = redis.Redis.from_url(redis_url)
    clear_queues(client)  # no stray messages from other tests
    try:
        with running_celery_worker(database_url, redis_url,
                                   tmp_path_factory.mktemp("worker-data")) as worker:
            yield worker
    finally:
        clear_queues(client)
        client.close()
