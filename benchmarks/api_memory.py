"""Does the API give memory back after a burst of large uploads?

Starts `mlpctl api` (SQLite in a temporary directory, the Redis of REDIS_URL or
redis://127.0.0.1:6379/15), measures its resident memory at rest, right after a burst of
concurrent uploads that each decode to ~100 MB, and again after the API's periodic trim
(service.server.release_free_memory, every 30 s). Prints a table.

    python benchmarks/api_memory.py [--uploads 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _api_process import running_api


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_npz(rows: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.standard_normal((rows, 64), dtype=np.float32),
             y=rng.integers(0, 10, rows))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=3, help="concurrent uploads a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=400_000, help="rows of each upload")
    args = parser.parse_args()

    with running_api(MLP_MAX_UPLOAD_BYTES=str(200 * 1024 * 1024),
                     MLP_MAX_DATASET_BYTES_PER_TENANT=str(50 * 1024**3)) as api:
        content = big_npz(args.rows)
        headers = {"Authorization": f"Bearer {api.key}"}
        rows = [("at rest", rss_mb(api.process.pid))]

        def upload() -> None:
            r = httpx.post(api.url + "/v1/datasets", headers=headers, timeout=300,
                           files={"file": ("big.npz", content)})
            assert r.status_code == 201, r.text

        for n in range(1, args.rounds + 1):
            threads = [threading.Thread(target=upload) for _ in range(args.uploads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rows.append((f"after round {n} ({args.uploads} × {len(content) >> 20} MiB "
                         "uploads)", rss_mb(api.process.pid)))
        time.sleep(35)
        rows.append(("35 s later (after a periodic trim)", rss_mb(api.process.pid)))
    print("| API process | resident MB |\n|---|---:|")
    for name, mb in rows:
        print(f"| {name} | {mb:.0f} |")


if __name__ == "__main__":
    main()
