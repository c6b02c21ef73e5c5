"""The hardening issue's attacks, bounded, against `mlpctl api` on this machine: event-stream
fan-out while another tenant polls, and half-open sockets while /healthz is timed.

Starts `mlpctl api` (SQLite in a temporary directory, the Redis of REDIS_URL or
redis://127.0.0.1:6379/15) with its default bounds and prints a table.

    python benchmarks/resource_attacks.py [--streams 70] [--sockets 1000]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
from _api_process import running_api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_stream(port: int, key: str, job_id: str) -> tuple[socket.socket, int]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {key}\r\n\r\n".encode())
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1]) if head else 0


def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=70)
    parser.add_argument("--sockets", type=int, default=1000)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with running_api() as api:
        port, url, env = api.port, api.url, api.env
        keys = [subprocess.run(
            [sys.executable, "-m", "mlpctl", "keys", "create", "--tenant", f"t{i}"],
            env=env, capture_output=True, text=True, check=True).stdout.strip().split()[-1]
            for i in range(11)]
        jobs = []
        for key in keys[:10]:
            r = httpx.post(url + "/v1/jobs", headers={"Authorization": f"Bearer {key}"},
                           json={"dataset": {"builtin": "iris"}}, timeout=30)
            jobs.append(r.json()["id"])

        # 1. one key opens `streams` streams; then ten keys open `streams` in all
        one_key = [open_stream(port, keys[0], jobs[0]) for _ in range(args.streams)]
        counts = Counter(status for _, status in one_key)
        rows.append((f"{args.streams} streams from one key",
                     ", ".join(f"{n}× {s}" for s, n in sorted(counts.items()))))
        spread = [open_stream(port, keys[i % 10], jobs[i % 10])
                  for i in range(args.streams)]
        counts = Counter(status for _, status in spread)
        rows.append((f"{args.streams} more streams from ten keys",
                     ", ".join(f"{n}× {s}" for s, n in sorted(counts.items()))))
        other = {"Authorization": f"Bearer {keys[10]}"}
        with httpx.Client(base_url=url, headers=other, timeout=20) as client:
            statuses: Counter[int] = Counter()

            def poll() -> None:
                statuses[client.get("/v1/datasets").status_code] += 1

            lat = timed(poll, 200)
        rows.append(("another tenant's GET /v1/datasets meanwhile (200×)",
                     f"p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms, "
                     f"statuses {dict(statuses)}"))
        for sock, _ in one_key + spread:
            sock.close()

        # 2. half-open sockets, then /healthz
        half = []
        for _ in range(args.sockets):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
            half.append(s)
        codes: Counter[int] = Counter()

        def healthz() -> None:
            codes[httpx.get(url + "/healthz", timeout=20).status_code] += 1

        lat = timed(healthz, 50)
        rows.append((f"/healthz with {args.sockets} half-open sockets (50×)",
                     f"p50 {pct(lat, .5):.1f} ms, max {max(lat):.1f} ms, "
                     f"statuses {dict(codes)}"))
        time.sleep(12)  # past MLP_HEADER_TIMEOUT_S (10 s)
        closed = 0
        for s in half:
            s.settimeout(0.01)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except (TimeoutError, BlockingIOError):
                pass
            s.close()
        rows.append(("half-open sockets closed by the API 12 s later",
                     f"{closed} of {args.sockets}"))
        codes.clear()
        lat = timed(healthz, 50)
        rows.append(("/healthz afterwards (50×)",
                     f"p50 {pct(lat, .5):.1f} ms, statuses {dict(codes)}"))
    print("| attack | result |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main()
