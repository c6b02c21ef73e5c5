"""Bounded versions of the resource attacks of SPEC section 7, against `mlpctl api` as a real
process: half-open and slow connections, a body that stops, event-stream fan-out, while
`/healthz` and another tenant's requests are timed and must keep answering.

The API runs with small bounds (2 s header and body timeouts, 3 streams per key, 5 in all)
so that each attack shows its bound within seconds."""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.procs import Stack, free_port, make_stack, spawn, tiny_spec, wait_for
from tests.security.conftest import API_ENV, auth, use_the_apis_key_secret

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 2
STREAMS_PER_KEY = 3
STREAMS = 5


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {**API_ENV, "MLP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "MLP_BODY_IDLE_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "MLP_MAX_STREAMS_PER_KEY": str(STREAMS_PER_KEY), "MLP_MAX_STREAMS": str(STREAMS),
           "MLP_REQUEST_THREADS": "4", "MLP_SSE_POLL_S": "0.2"}
    with make_stack(tmp_path_factory.mktemp("resources"), **env) as stack:
        stack.port = free_port()
        stack.api = spawn("api", [sys.executable, "-m", "mlpctl", "api", "--host", "127.0.0.1",
                                  "--port", str(stack.port), "--log-level", "warning"],
                          env=stack.env, log_path=stack.directory / "api.log")
        stack.wait_api_ready()
        use_the_apis_key_secret(stack)
        yield stack


def _connect(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    sock.settimeout(0.05)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this socket (EOF or reset), without waiting long."""
    try:
        return sock.recv(65_536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, BlockingIOError):
        return False


def _healthz_seconds(stack: Stack, n: int = 10) -> float:
    """The slowest of n `/healthz` answers (each on a new connection)."""
    worst = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        assert httpx.get(stack.base_url + "/healthz", timeout=5).status_code == 200
        worst = max(worst, time.perf_counter() - t0)
    return worst


def test_half_open_and_slow_connections_are_closed_and_healthz_keeps_answering(guarded):
    half_open = []
    for _ in range(200):
        sock = _connect(guarded)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")  # never finished
        half_open.append(sock)
    slowloris = _connect(guarded)
    slowloris.sendall(b"GET /healthz HTTP/1.1\r\n")
    try:
        assert _healthz_seconds(guarded) < 1.0
        started = time.monotonic()
        # one header byte every 0.3 s is progress, but not headers within the deadline
        while time.monotonic() - started < HEADER_TIMEOUT_S + 3:
            if _closed_by_server(slowloris):
                break
            try:
                slowloris.sendall(b"X")
            except OSError:
                break
            time.sleep(0.3)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 3, "the slow client was kept"
        wait_for(lambda: all(_closed_by_server(s) for s in half_open), 10, 0.2,
                 "the server closing every half-open connection")
        assert _healthz_seconds(guarded) < 1.0
    finally:
        for sock in [*half_open, slowloris]:
            sock.close()


def test_a_body_that_stops_arriving_is_dropped(guarded):
    key = guarded.new_key()
    sock = _connect(guarded)
    try:
        sock.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\n"
                     b"Content-Type: multipart/form-data; boundary=b0und\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     b"10\r\n--b0und\r\nContent\r\n")  # then nothing, ever
        started = time.monotonic()

        def dropped() -> bool:
            try:
                data = sock.recv(65_536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except (TimeoutError, BlockingIOError):
                return False
            return data == b"" or data.startswith(b"HTTP/1.1 4")

        wait_for(dropped, HEADER_TIMEOUT_S + 8, 0.2, "the stalled upload being dropped")
        assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.5
    finally:
        sock.close()
    assert _healthz_seconds(guarded, 3) < 1.0


def _open_stream(stack: Stack, key: str, job_id: str) -> tuple[socket.socket, int]:
    """An SSE request on a raw socket: (socket, status code); the stream stays open."""
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1])


def _queued_job(stack: Stack, key: str) -> str:
    with stack.http(key) as client:
        r = client.post("/v1/jobs", json=tiny_spec(f"streamed-{uuid.uuid4().hex[:6]}"))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def test_event_streams_are_bounded_and_never_starve_other_requests(guarded):
    a, b, c = guarded.new_key(), guarded.new_key(), guarded.new_key()
    job_a, job_b = _queued_job(guarded, a), _queued_job(guarded, b)
    opened: list[socket.socket] = []
    try:
        for _ in range(STREAMS_PER_KEY):
            sock, status = _open_stream(guarded, a, job_a)
            opened.append(sock)
            assert status == 200
        sock, status = _open_stream(guarded, a, job_a)
        sock.close()
        assert status == 429, "a key past max_streams_per_key"
        for _ in range(STREAMS - STREAMS_PER_KEY):
            sock, status = _open_stream(guarded, b, job_b)
            opened.append(sock)
            assert status == 200
        sock, status = _open_stream(guarded, b, job_b)
        sock.close()
        assert status == 429, "past max_streams in all"

        # every stream polls the database; another tenant's requests still answer at once
        with guarded.http(c, timeout=5) as client:
            for _ in range(20):
                t0 = time.perf_counter()
                assert client.get("/v1/datasets").status_code == 200
                assert time.perf_counter() - t0 < 1.0
        assert _healthz_seconds(guarded, 5) < 1.0
        with guarded.http(a) as client:  # the catalog publishes the bounds
            limits = client.get("/v1/catalog").json()["limits"]
        assert limits["max_streams_per_key"] == STREAMS_PER_KEY
        assert limits["max_streams"] == STREAMS
    finally:
        for sock in opened:
            sock.close()

    # a closed stream gives its place back
    def reopens() -> bool:
        sock, status = _open_stream(guarded, a, job_a)
        sock.close()
        return status == 200

    wait_for(reopens, 10, 0.3, "a stream opening again once the others closed")


def test_an_upload_field_flood_fails_at_once_and_the_api_keeps_answering(guarded):
    key = guarded.new_key()
    fields = b"".join(b"--b0und\r\nContent-Disposition: form-data; name=\"junk%d\"\r\n\r\n"
                      % i + b"x" * 65_536 + b"\r\n" for i in range(300))
    body = (b"--b0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.csv\""
            b"\r\n\r\na,y\n1,0\n2,1\r\n" + fields + b"--b0und--\r\n")
    with httpx.Client(base_url=guarded.base_url, headers=auth(key), timeout=30) as client:
        t0 = time.perf_counter()
        r = client.post("/v1/datasets", content=iter([body[i:i + 65_536] for i in
                                                      range(0, len(body), 65_536)]),
                        headers={"Content-Type": "multipart/form-data; boundary=b0und"})
        assert r.status_code == 422 and "junk0" in r.json()["message"], r.text
        assert time.perf_counter() - t0 < 10
    assert _healthz_seconds(guarded, 3) < 1.0


def test_a_client_leaving_mid_upload_is_not_a_server_error(guarded):
    """Logged at INFO, no traceback, no 5xx in /metrics: it was the client's doing."""
    key = guarded.new_key()
    sock = _connect(guarded)
    sock.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\n"
                 b"Content-Type: multipart/form-data; boundary=b0und\r\n"
                 b"Content-Length: 100000\r\n\r\n--b0und\r\nContent-Disposition: form-data;"
                 b" name=\"file\"; filename=\"d.csv\"\r\n\r\na,y\n1,0\n")
    time.sleep(0.5)
    sock.close()
    time.sleep(1.0)
    metrics = httpx.get(guarded.base_url + "/metrics", timeout=5).text
    assert not [line for line in metrics.splitlines()
                if "/v1/datasets" in line and 'status="5' in line], metrics
    assert "Traceback" not in guarded.api.log()
