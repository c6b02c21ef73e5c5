"""Webhook fixtures: a real HTTP receiver on 127.0.0.1 that answers as a test scripts it
and records what it got, the app in-process (TestClient) on real Redis and PostgreSQL, and
a real webhook sender thread (worker.webhooks) with a backoff of fractions of a second.

Loopback targets need MLP_WEBHOOK_ALLOW_PRIVATE, which these apps and senders set; the
SSRF tests make an app without it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

FAST_RETRIES = {"webhook_poll_s": 0.05, "webhook_retry_base_s": 0.2,
                "webhook_retry_max_delay_s": 0.4, "webhook_retry_window_s": 30.0,
                "webhook_lease_s": 11.0}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """An HTTP server that answers each POST with the next scripted (status, headers), or
    `default` once the script is spent, and records every request."""

    url: str = ""
    default: int = 200
    delay_s: float = 0.0  # before answering
    reply: bytes = b"ok"
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            return self.script.pop(0) if self.script else (self.default, {})

    def by_delivery(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for r in list(self.received):
            out.setdefault(r.headers.get("x-mlp-delivery", ""), []).append(r)
        return out


def _start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers = receiver.answer()
            receiver.received.append(Received(
                {k.lower(): v for k, v in self.headers.items()}, body, status))
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(receiver.reply)))
            self.end_headers()
            try:
                self.wfile.write(receiver.reply)
            except OSError:  # the sender read what it wanted and closed
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver, server = _start_receiver()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_receiver() -> Iterator[Callable[[], Receiver]]:
    servers: list[ThreadingHTTPServer] = []

    def make() -> Receiver:
        receiver, server = _start_receiver()
        servers.append(server)
        return receiver

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@dataclass
class App:
    client: TestClient

    @property
    def services(self) -> Any:
        return self.client.app.state.services  # type: ignore[attr-defined]

    def auth(self, tenant: str | None = None) -> dict[str, str]:
        from store.keys import create_api_key

        with self.services.session_factory() as session:
            key = create_api_key(session, tenant or f"t-{uuid.uuid4().hex[:10]}",
                                 hasher=self.services.key_hasher)
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_app(tmp_path: Path, migrated_db: str, redis_url: str
             ) -> Iterator[Callable[..., App]]:
    import contextlib

    from service.app import create_app
    from service.settings import Settings

    stack = contextlib.ExitStack()

    def make(**overrides: Any) -> App:
        data_dir = tmp_path / f"app-{uuid.uuid4().hex[:6]}"
        values: dict[str, Any] = {
            "data_dir": data_dir, "database_url": migrated_db, "redis_url": redis_url,
            "artifacts_url": str(data_dir / "artifacts"), "reconcile_interval_s": 0,
            "rate_limit_per_minute": 0, "webhook_allow_private": True}
        values.update(overrides)
        client = stack.enter_context(TestClient(create_app(Settings(**values))))
        return App(client)

    with stack:
        yield make


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    return make_app()


@pytest.fixture
def make_sender(migrated_db: str, redis_url: str, tmp_path: Path
                ) -> Iterator[Callable[..., Any]]:
    """Start a real sender thread (what a worker's main process runs) on the test database."""
    from worker.settings import WorkerSettings
    from worker.webhooks import WebhookSender

    senders: list[Any] = []

    def make(**overrides: Any) -> Any:
        values: dict[str, Any] = {"data_dir": tmp_path, "database_url": migrated_db,
                                  "redis_url": redis_url, "webhook_allow_private": True,
                                  **FAST_RETRIES}
        values.update(overrides)
        sender = WebhookSender(WorkerSettings(**values),
                               worker_id=f"test-{uuid.uuid4().hex[:6]}")
        sender.start()
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.stop()

