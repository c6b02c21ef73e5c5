"""What the service costs on top of the engine, in one run:

1. bookkeeping: a many-epoch iris job through `mlpctl standalone` (its worker on one torch
   thread) from the job's start to its end, against `fit` of the same spec alone on one
   thread in this process (best of `--repeats` each); the goal is at most 1.05x;
2. submit throughput: jobs/s that one `mlpctl api` process accepts (POST /v1/jobs from
   `--clients` concurrent clients);
3. GET /v1/jobs/{id} throughput against a bare route of the same process (`/healthz`),
   and where a GET's time goes inside the process (profiled in-process: the key check,
   the database, the answer's encoding, the framework).

    python benchmarks/service_overhead.py [--epochs 1000] [--repeats 2] [--posts 300]
                                          [--gets 2000] [--clients 8]

Redis: REDIS_URL (default redis://127.0.0.1:6379/15) for the API part; standalone brings
its own. Prints markdown tables and the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._api_process import running_api, running_standalone  # noqa: E402

TINY = {"dataset": {"inline": {"x": [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 4,
                               "y": [0, 1, 1, 0] * 4}},
        "model": {"hidden_dims": [8]}, "training": {"epochs": 2, "batch_size": 4}}


def iris_spec(epochs: int) -> dict[str, Any]:
    return {"name": "overhead", "dataset": {"builtin": "iris"}, "device": "cpu",
            "model": {"hidden_dims": [16]},
            "training": {"epochs": epochs, "batch_size": 32, "seed": 0}}


# --------------------------------------------------------------------------- 1. bookkeeping


def engine_alone(spec: dict[str, Any]) -> float:
    from mlp_engine import fit

    start = time.perf_counter()
    fit(spec, num_threads=1)
    return time.perf_counter() - start


def through_service(spec: dict[str, Any], repeats: int) -> list[float]:
    """Seconds from the job's start (claimed by the worker) to its end, per run."""
    with running_standalone() as (url, key):
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            client.post("/v1/jobs", json=TINY).raise_for_status()  # warm the worker
            times = []
            for _ in range(repeats + 1):
                job_id = client.post("/v1/jobs", json=spec).json()["id"]
                while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
                        "succeeded", "failed", "cancelled"):
                    time.sleep(0.05)
                if job["status"] != "succeeded":
                    raise SystemExit(f"the job ended {job['status']}: {job.get('error')}")
                times.append((datetime.fromisoformat(job["finished_at"])
                              - datetime.fromisoformat(job["started_at"])).total_seconds())
            return times[1:]  # the first run pays the worker's first imports


# --------------------------------------------------------------------------- 2./3. the API


def _hammer(url: str, key: str, n: int, clients: int,
            request: Callable[[httpx.Client], httpx.Response]) -> tuple[float, int]:
    """Send `n` requests from `clients` threads; (requests per second, non-2xx count)."""
    errors = [0]
    counter = iter(range(n))
    lock = threading.Lock()

    def run() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as client:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                if request(client).status_code >= 300:
                    with lock:
                        errors[0] += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - start), errors[0]


def api_throughput(posts: int, gets: int, clients: int) -> dict[str, tuple[float, int]]:
    limits = {"MLP_MAX_ACTIVE_JOBS_PER_TENANT": "100000", "MLP_MAX_QUEUED_JOBS": "100000"}
    with running_api(**limits) as api:
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.key}"},
                          timeout=30) as client:
            job_id = client.post("/v1/jobs", json=TINY).json()["id"]
            for _ in range(50):  # warm up both routes
                client.get(f"/v1/jobs/{job_id}")
                client.get("/healthz")
        return {
            "submit": _hammer(api.url, api.key, posts, clients,
                              lambda c: c.post("/v1/jobs", json=TINY)),
            "get": _hammer(api.url, api.key, gets, clients,
                           lambda c: c.get(f"/v1/jobs/{job_id}")),
            "bare": _hammer(api.url, api.key, gets, clients, lambda c: c.get("/healthz")),
        }


def _per_call_ms(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def get_parts(n: int) -> list[tuple[str, float]]:
    """Where a GET /v1/jobs/{id}'s time goes in the process: each step the route takes,
    timed alone `n` times (SQLite, in this process), and the whole request through
    Starlette's TestClient."""
    from fastapi.testclient import TestClient

    from service.schemas import JobPublic
    from store.jobs import get_job_for_tenant
    from store.keys import tenant_for_key

    key = "mlp_" + "p" * 30
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update({"MLP_DATA_DIR": tmp, "DATABASE_URL": f"sqlite:///{tmp}/p.db",
                           "MLP_API_KEY": key,
                           "REDIS_URL": os.environ.get("REDIS_URL",
                                                       "redis://127.0.0.1:6379/15"),
                           "MLP_RATE_LIMIT_PER_MINUTE": "0", "MLP_RECONCILE_INTERVAL_S": "0"})
        from service.app import create_app

        app = create_app()
        with TestClient(app) as client:
            headers = {"Authorization": f"Bearer {key}"}
            job_id = client.post("/v1/jobs", json=TINY, headers=headers).json()["id"]
            services = app.state.services
            factory, hasher = services.session_factory, services.key_hasher
            with factory() as session:
                tenant = tenant_for_key(session, key, hasher=hasher)
                assert tenant is not None
                tenant_id = tenant.id
                job = get_job_for_tenant(session, tenant_id, job_id)
                assert job is not None

                def open_close() -> None:
                    with factory() as s:
                        s.connection()

                def key_check() -> None:
                    with factory() as s:
                        tenant_for_key(s, key, hasher=hasher)

                def job_lookup() -> None:
                    with factory() as s:
                        get_job_for_tenant(s, tenant_id, job_id)

                rows = [
                    ("session with a connection (open, close)", _per_call_ms(open_close, n)),
                    ("key check (keyed hash + lookup, own session)", _per_call_ms(key_check, n)),
                    ("job lookup (own session)", _per_call_ms(job_lookup, n)),
                    ("answer model (JobPublic.from_row)",
                     _per_call_ms(lambda: JobPublic.from_row(job), n)),
                    ("JSON encoding (model_dump_json)",
                     _per_call_ms(lambda: JobPublic.from_row(job).model_dump_json(), n)),
                ]
            for _ in range(50):
                client.get(f"/v1/jobs/{job_id}", headers=headers)
            rows.append(("whole request through TestClient",
                         _per_call_ms(lambda: client.get(f"/v1/jobs/{job_id}", headers=headers),
                                      n)))
            rows.append(("bare route through TestClient (/healthz)",
                         _per_call_ms(lambda: client.get("/healthz"), n)))
    return rows


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    spec = iris_spec(args.epochs)
    engine_alone(iris_spec(2))  # imports and first-call costs out of the measurement
    alone = min(engine_alone(spec) for _ in range(args.repeats))
    service = min(through_service(spec, args.repeats))
    ratio = service / alone
    print(f"## Bookkeeping: iris, {args.epochs} epochs, one torch thread, best of "
          f"{args.repeats}\n")
    print("| run | seconds | per epoch (ms) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| `fit` alone | {alone:.2f} | {alone / args.epochs * 1000:.3f} | 1.00 |")
    print(f"| through the service (start to end of the job) | {service:.2f} | "
          f"{service / args.epochs * 1000:.3f} | {ratio:.3f} |")
    print(f"\nbookkeeping ratio {ratio:.3f} (goal <= 1.05: "
          f"{'holds' if ratio <= 1.05 else 'MISSED'})\n")

    api = api_throughput(args.posts, args.gets, args.clients)
    print(f"## One API process, {args.clients} concurrent clients\n")
    print("| requests | n | per second | non-2xx |")
    print("|---|---:|---:|---:|")
    print(f"| POST /v1/jobs (tiny job) | {args.posts} | {api['submit'][0]:.0f} | "
          f"{api['submit'][1]} |")
    print(f"| GET /v1/jobs/{{id}} | {args.gets} | {api['get'][0]:.0f} | {api['get'][1]} |")
    print(f"| GET /healthz (bare route) | {args.gets} | {api['bare'][0]:.0f} | "
          f"{api['bare'][1]} |")
    print(f"\nGET /v1/jobs/{{id}} / bare route: {api['get'][0] / api['bare'][0]:.2f}\n")

    print("## Where a GET /v1/jobs/{id} goes (each step alone, in-process, SQLite)\n")
    print("| step | ms per call |")
    print("|---|---:|")
    for what, ms in get_parts(min(args.gets, 1000)):
        print(f"| {what} | {ms:.3f} |")


if __name__ == "__main__":
    main()
