"""Service latency: submit-to-succeeded time of a tiny job, and GET /v1/jobs/{id}.

Starts `mlpctl standalone` on a free port in a temporary data directory (embedded Redis,
SQLite, one worker on one torch thread), then measures over HTTP as a client does, and stops it.

    python benchmarks/service_latency.py [--jobs 10] [--gets 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._api_process import running_standalone  # noqa: E402

TINY = {"dataset": {"inline": {"x": [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 4,
                               "y": [0, 1, 1, 0] * 4}},
        "model": {"hidden_dims": [8]}, "training": {"epochs": 2, "batch_size": 4}}


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--gets", type=int, default=500)
    args = parser.parse_args()
    with running_standalone() as (url, key):
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
    print("| measurement | n | median | p95 |")
    print("|---|---:|---:|---:|")
    print(f"| tiny job, POST /v1/jobs to status succeeded (s) | {len(totals)} | "
          f"{statistics.median(totals):.3f} | {_pct(totals, 0.95):.3f} |")
    print(f"| GET /v1/jobs/{{id}} (ms) | {len(gets)} | {statistics.median(gets):.2f} | "
          f"{_pct(gets, 0.95):.2f} |")


if __name__ == "__main__":
    main()
