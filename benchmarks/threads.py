"""Why the worker sets torch's threads from the cores it may use.

Trains the same digits job with 1 and with all cores' worth of torch threads, first on an
idle machine and then while another process keeps one core busy (as the API, a second
worker or any neighbour does), and prints a table with the slowdown.

    python benchmarks/threads.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch

from mlp_engine import fit


def _burn(stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def _train(threads: int, epochs: int) -> float:
    spec = {"dataset": {"builtin": "digits"}, "model": {"hidden_dims": [128, 128]},
            "training": {"epochs": epochs, "batch_size": 64, "validation_split": 0.0}}
    start = time.perf_counter()
    fit(spec, num_threads=threads)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = sorted({1, cores})
    _train(1, 1)  # warm-up: imports, first allocations
    rows = []
    for loaded in (False, True):
        stop = mp.Event()
        burner = mp.Process(target=_burn, args=(stop,), daemon=True) if loaded else None
        if burner is not None:
            burner.start()
            time.sleep(0.5)
        try:
            for threads in settings:
                rows.append((loaded, threads, _train(threads, args.epochs)))
        finally:
            stop.set()
            if burner is not None:
                burner.join(5)
    print(f"digits 64-128-128-10, batch 64, {args.epochs} epochs; {cores} cores; "
          f"torch {torch.__version__}\n")
    print("| other process busy on one core | torch threads | wall s | x idle 1-thread |")
    print("|---|---:|---:|---:|")
    base = next(s for loaded, t, s in rows if not loaded and t == 1)
    for loaded, threads, seconds in rows:
        print(f"| {'yes' if loaded else 'no'} | {threads} | {seconds:.2f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
