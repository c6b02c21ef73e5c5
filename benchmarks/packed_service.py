"""Packed trials through the service (SPEC 9), in one run: a sweep of `--trials` trials of
digits 64-64-64-10 (`--epochs` epochs, batch 64, lr log-spaced) on one standalone worker
(with each of `--threads` torch threads), against the same trials submitted as lone jobs to the same worker.

Both are timed from the first submit to the last trial's end, as a user waits for them;
the best of `--repeats` runs of each is kept.
The sweep's trials share an architecture, so the worker that takes the first trains them
all as one batched model (worker.packs); the lone jobs run one after another.

    python benchmarks/packed_service.py [--trials 16] [--epochs 10] [--threads 1,2]
                                        [--repeats 3]

Prints a markdown table and the throughput ratio (the issue's goal: >= 4x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._api_process import running_standalone  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled", "pruned")


def lrs(n: int) -> list[float]:
    return [round(10 ** (-4 + 2.5 * i / max(1, n - 1)), 6) for i in range(n)]


def base(epochs: int) -> dict[str, Any]:
    return {"dataset": {"builtin": "digits"}, "device": "cpu",
            "model": {"hidden_dims": [64, 64, 64]}, "optimizer": {"name": "adam"},
            "training": {"epochs": epochs, "batch_size": 64, "seed": 0}}


def wait_jobs(client: httpx.Client, ids: list[str]) -> None:
    """Until every job of `ids` ended: one list request per 50 ms (the API shares the
    machine's cores with the worker)."""
    left = set(ids)
    while left:
        r = client.get("/v1/jobs", params={"limit": 100})
        r.raise_for_status()
        left -= {j["id"] for j in r.json()["items"] if j["status"] in TERMINAL}
        time.sleep(0.05)


def lone_jobs(client: httpx.Client, trials: int, epochs: int) -> float:
    start = time.perf_counter()
    ids = []
    for lr in lrs(trials):
        spec = base(epochs)
        spec["optimizer"] = {"name": "adam", "lr": lr}
        r = client.post("/v1/jobs", json=spec)
        r.raise_for_status()
        ids.append(r.json()["id"])
    wait_jobs(client, ids)
    return time.perf_counter() - start


def packed_sweep(client: httpx.Client, trials: int, epochs: int) -> tuple[float, dict]:
    start = time.perf_counter()
    r = client.post("/v1/sweeps", json={
        "name": "packed-bench", "base": base(epochs),
        "space": {"optimizer.lr": {"choice": lrs(trials)}}, "strategy": "grid",
        "max_concurrent": trials, "objective": {"metric": "val_accuracy", "mode": "max"}})
    r.raise_for_status()
    sweep_id = r.json()["id"]
    while (sweep := client.get(f"/v1/sweeps/{sweep_id}").json())["status"] not in (
            "succeeded", "failed", "cancelled"):
        time.sleep(0.05)
    took = time.perf_counter() - start
    trial_jobs = client.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 100}).json()
    packed = sum("packed with" in client.get(f"/v1/jobs/{j['id']}/logs").text
                 for j in trial_jobs["items"])
    return took, {"sweep": sweep, "packed": packed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="the worker's torch threads, each")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each; the best is kept (the machine's noise)")
    args = parser.parse_args()
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        with running_standalone(MLP_WORKER_THREADS=str(threads),
                                MLP_RATE_LIMIT_PER_MINUTE="0") as (url, key):
            with httpx.Client(base_url=url, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}) as client:
                lone_jobs(client, 1, 1)  # the worker's first imports out of the measurement
                lone = min(lone_jobs(client, args.trials, args.epochs)
                           for _ in range(args.repeats))
                packs = [packed_sweep(client, args.trials, args.epochs)
                         for _ in range(args.repeats)]
                pack, info = min(packs, key=lambda p: p[0])
        rows.append((threads, lone, pack, info))
    print(f"## {args.trials} trials of digits 64-64-64-10, {args.epochs} epochs, batch 64, "
          f"lr varied; one standalone worker; best of {args.repeats}\n")
    print("| worker threads | run | seconds (first submit to last end) | per trial (s) | "
          "throughput x |")
    print("|---:|---|---:|---:|---:|")
    for threads, lone, pack, info in rows:
        print(f"| {threads} | {args.trials} lone jobs | {lone:.2f} | {lone / args.trials:.3f} "
              "| 1.00 |")
        print(f"| {threads} | a sweep of {args.trials} trials ({info['packed']} trained packed) "
              f"| {pack:.2f} | {pack / args.trials:.3f} | {lone / pack:.2f} |")
    for threads, lone, pack, info in rows:
        sweep = info["sweep"]
        print(f"\n{threads} thread(s): sweep {sweep['status']}, "
              f"{sweep['counts']['succeeded']} trials succeeded; throughput ratio "
              f"{lone / pack:.2f} (goal >= 4: {'holds' if lone / pack >= 4 else 'missed'})")


if __name__ == "__main__":
    main()
