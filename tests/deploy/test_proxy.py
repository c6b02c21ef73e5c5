"""The reverse proxy of docker-compose (deploy/nginx.conf), run with Debian's nginx in front
of the compose api command: requests and event streams pass through, and what a client
could hold at the edge is bounded (slow headers, stalled bodies, oversized uploads).

nginx is the real one; only the addresses (the compose network's `api:8000`, the listen
port) and, for speed, the two client timeouts are changed in the copy that runs here. CI
installs nginx (.ci/run); elsewhere these tests skip with a reason when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlpctl.standalone import Child, spawn, stop_children, wait_http_ok
from tests.deploy.test_compose import (
    ROOT,
    TEST_KEY,
    _free_port,
    local_command,
    local_env,
    services,
)

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
FAST_TIMEOUT_S = 2
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NGINX is None and not os.environ.get("CI"),
                       reason="Debian's nginx is not installed (apt-get install nginx); "
                              ".ci/run installs it"),
]


def test_the_proxy_is_the_only_door() -> None:
    svc = services()
    proxy, api = svc["proxy"], svc["api"]
    assert proxy["image"].startswith("nginx:")
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert "8000:8080" in proxy["ports"]
    assert "ports" not in api, "the API is reached through the proxy only"
    assert api["environment"]["FORWARDED_ALLOW_IPS"] == "*"
    conf = NGINX_CONF.read_text()
    for directive, most in (("client_header_timeout", 60), ("client_body_timeout", 60),
                            ("send_timeout", 60), ("keepalive_timeout", 75)):
        value = re.search(rf"^\s*{directive} (\d+)s;", conf, re.M)
        assert value and 0 < int(value.group(1)) <= most, directive
    assert re.search(r"^\s*limit_conn per_address \d+;", conf, re.M)
    assert re.search(r"^\s*client_max_body_size \d+m;", conf, re.M)
    assert "server api:8000;" in conf and "listen 8080;" in conf


def _local_conf(directory: Path, *, api_port: int, port: int) -> Path:
    conf = NGINX_CONF.read_text()
    for old, new in (("server api:8000;", f"server 127.0.0.1:{api_port};"),
                     ("listen 8080;", f"listen 127.0.0.1:{port};"),
                     ("client_header_timeout 10s;", f"client_header_timeout {FAST_TIMEOUT_S}s;"),
                     ("client_body_timeout 30s;", f"client_body_timeout {FAST_TIMEOUT_S}s;")):
        assert old in conf, f"deploy/nginx.conf lost '{old}'"
        conf = conf.replace(old, new)
    path = directory / "nginx.conf"
    path.write_text(conf)
    return path


@pytest.fixture
def proxied(tmp_path: Path, data_dir: Path, database_url: str,
            redis_url: str) -> Iterator[str]:
    """The compose api command and nginx with the compose proxy's configuration in front;
    yields the proxy's base URL."""
    assert NGINX is not None, "CI must install nginx (.ci/run)"
    svc = services()
    api_port, port = _free_port(), _free_port()
    translate = {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                 "MLP_DATA_DIR": str(data_dir), "MLP_ARTIFACTS_URL": str(data_dir / "artifacts"),
                 "MLP_API_KEY": TEST_KEY}
    children: list[Child] = [spawn(
        "api", local_command(svc["api"]["command"], port=api_port),
        env=local_env(svc["api"]["environment"], translate=translate),
        log_path=tmp_path / "api.log", stop_signals=(signal.SIGTERM,))]
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = _local_conf(prefix, api_port=api_port, port=port)
    nginx = subprocess.Popen([NGINX, "-p", f"{prefix}/", "-c", str(conf), "-g",
                              f"daemon off; pid {prefix}/nginx.pid;"],
                             stdout=open(tmp_path / "nginx.log", "wb"),  # noqa: SIM115
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ok, last = wait_http_ok(f"http://127.0.0.1:{api_port}/readyz", timeout=60,
                                alive=children[0].alive)
        assert ok, f"/readyz: {last}\n{children[0].log_tail()}"
        ok, last = wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=20,
                                alive=lambda: nginx.poll() is None)
        assert ok, f"nginx: {last}\n{(tmp_path / 'nginx.log').read_text()}"
        yield f"http://127.0.0.1:{port}"
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(nginx.pid, signal.SIGKILL)
            nginx.wait()
        stop_children(children, step_timeout=10)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65_536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
        if data == b"" or data.startswith(b"HTTP/1.1 408"):
            return True
    return False


def test_requests_and_event_streams_pass_through(proxied: str) -> None:
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    with httpx.Client(base_url=proxied, headers=headers, timeout=30) as client:
        assert client.get("/v1/catalog").status_code == 200
        job = client.post("/v1/jobs", json={"dataset": {"builtin": "iris"},
                                            "training": {"epochs": 1}})
        assert job.status_code == 201, job.text
        t0 = time.monotonic()
        with client.stream("GET", f"/v1/jobs/{job.json()['id']}/events") as stream:
            assert stream.status_code == 200
            first = next(line for line in stream.iter_lines() if line.startswith("event: "))
        # the stream's first event arrives at once: nginx does not buffer it
        assert first == "event: status" and time.monotonic() - t0 < 5


def test_slow_headers_and_stalled_bodies_are_dropped_at_the_edge(proxied: str) -> None:
    slow = socket.create_connection(("127.0.0.1", _port(proxied)))
    stalled = socket.create_connection(("127.0.0.1", _port(proxied)))
    try:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        stalled.sendall(b"POST /v1/specs/validate HTTP/1.1\r\nHost: x\r\n"
                        b"Authorization: Bearer " + TEST_KEY.encode() + b"\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        assert _closed_within(slow, FAST_TIMEOUT_S + 5), "a slow header was kept"
        assert _closed_within(stalled, FAST_TIMEOUT_S + 5), "a stalled body was kept"
    finally:
        slow.close()
        stalled.close()
    assert httpx.get(proxied + "/healthz", timeout=5).status_code == 200


def test_an_oversized_upload_is_refused_before_its_body(proxied: str) -> None:
    sock = socket.create_connection(("127.0.0.1", _port(proxied)), timeout=10)
    try:
        sock.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + TEST_KEY.encode() + b"\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 200000000\r\n\r\n")
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
