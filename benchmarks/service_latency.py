"""Service latency: submit-to-succeeded time of a tiny job, and GET /v1/jobs/{id}.

Starts `mlpctl standalone` on a free port in a temporary data directory (embedded Redis,
SQLite, one worker), then measures over HTTP as a client does, and stops it.

    python benchmarks/service_latency.py [--jobs 10] [--gets 500]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

TINY = {"dataset": {"inline": {"x": [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 4,
                               "y": [0, 1, 1, 0] * 4}},
        "model": {"hidden_dims": [8]}, "training": {"epochs": 2, "batch_size": 4}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--gets", type=int, default=500)
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "DATABASE_URL", "MLP_API_KEY")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlpctl", "standalone", "--port", str(port),
             "--data-dir", data_dir], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        key = None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                found = re.search(r"\b(mlp_[A-Za-z0-9_-]{20,})", line)
                key = key or (found.group(1) if found else None)
                if "Press Ctrl-C" in line:
                    break
            if key is None:
                raise SystemExit("standalone did not print an API key")
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                              timeout=30) as client:
                totals = []
                job_id = ""
                for _ in range(args.jobs):
                    start = time.perf_counter()
                    job_id = client.post("/v1/jobs", json=TINY).json()["id"]
                    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
                        time.sleep(0.01)
                    totals.append(time.perf_counter() - start)
                gets = []
                for _ in range(args.gets):
                    start = time.perf_counter()
                    client.get(f"/v1/jobs/{job_id}").raise_for_status()
                    gets.append((time.perf_counter() - start) * 1000)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("| measurement | n | median | p95 |")
    print("|---|---:|---:|---:|")
    print(f"| tiny job, POST /v1/jobs to status succeeded (s) | {len(totals)} | "
          f"{statistics.median(totals):.3f} | {_pct(totals, 0.95):.3f} |")
    print(f"| GET /v1/jobs/{{id}} (ms) | {len(gets)} | {statistics.median(gets):.2f} | "
          f"{_pct(gets, 0.95):.2f} |")


if __name__ == "__main__":
    main()
