"""How much faster one packed fit trains a sweep's trials than one lone fit per trial.

    python benchmarks/packed_sweep.py [--threads 1,2] [--repeats 5] [--trials 16] [--epochs 10]

The case of issue #8: 16 trials of digits 64-64-64-10 (hidden [64, 64, 64], ReLU, the
default init and validation split), Adam with learning rates log-spaced over [1e-4, 1e-1],
batch 64, 10 epochs. Engine level: `mlp_engine.fit` once per trial, one after another,
against one `mlp_engine.packed.fit_packed` of all the trials, at the same torch thread
count (each value of --threads is a configuration). Two sweeps: the trials share the seed
(a learning-rate sweep: one copy of the data, the same batch order), or each trial has a
seed of its own (its own split, standardisation and batch order).

Wall seconds are the best of --repeats runs, lone and packed alternating so that both see
the same load; CPU seconds the least process time (all threads). `× lone` is the
throughput ratio: the lone runs' wall time over the packed run's. The profile splits the
best packed run's time by phase (`mlp_engine.packed.Stopwatch`): setup (data, the lone
models and optimisers of every trial, the stacks), gather (batch rows), forward (with the
loss), backward, optimizer (penalty, clipping, the optimiser kernels), callbacks per batch,
validation (one batched pass), epoch end (records, callbacks) and the rest. `|Δ acc|` is
the largest difference of a trial's final val_accuracy between its lone and packed runs,
over the trials with lr <= 1e-2 (above that, Adam on digits is chaotic: rounding
differences of batched matmuls grow into different runs, as any change of BLAS would).
Other work on the machine shows up in these numbers (the header gives the load average).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Run from a checkout without installing: `python benchmarks/packed_sweep.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlp_engine.packed import Stopwatch, fit_packed  # noqa: E402
from mlp_engine.training import FitResult, fit  # noqa: E402

STABLE_LR = 1e-2


def sweep(trials: int, epochs: int, *, seeds: bool) -> list[dict[str, Any]]:
    return [{"dataset": {"builtin": "digits"}, "model": {"hidden_dims": [64, 64, 64]},
             "optimizer": {"name": "adam", "lr": float(lr)},
             "training": {"epochs": epochs, "batch_size": 64, "seed": i if seeds else 0},
             "device": "cpu"}
            for i, lr in enumerate(np.logspace(-4, -1, trials))]


@dataclasses.dataclass
class Timed:
    times: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    results: list[FitResult] = dataclasses.field(default_factory=list)
    profile: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, wall: float, cpu: float, results: list[FitResult],
            profile: dict[str, float] | None = None) -> None:
        if not self.times or wall < min(self.times):
            self.results, self.profile = results, profile or {}
        self.times.append(wall)
        self.cpu.append(cpu)


def run(specs: list[dict[str, Any]], *, threads: int, repeats: int) -> tuple[Timed, Timed]:
    torch.set_num_threads(threads)
    fit(specs[0] | {"training": {**specs[0]["training"], "epochs": 1}})  # torch's first calls
    lone, packed = Timed(), Timed()
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        results = [fit(s) for s in specs]
        lone.add(time.perf_counter() - wall, time.process_time() - cpu, results)

        watch = Stopwatch()
        wall, cpu = time.perf_counter(), time.process_time()
        outcomes = fit_packed(specs, stopwatch=watch)
        elapsed, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
        packed.add(elapsed, cpu_s, [o.unwrap() for o in outcomes], dict(watch.seconds))
    return lone, packed


def max_accuracy_gap(specs: list[dict[str, Any]], lone: Timed, packed: Timed) -> float:
    gaps = [abs(a.history[-1]["val_accuracy"] - b.history[-1]["val_accuracy"])
            for s, a, b in zip(specs, lone.results, packed.results, strict=True)
            if s["optimizer"]["lr"] <= STABLE_LR]
    return max(gaps)


PHASES = {  # Stopwatch phase -> profile row
    "setup": "setup", "gather": "gather", "forward": "forward (+ loss)",
    "backward": "backward", "optimizer": "optimizer", "batch callbacks": "callbacks per batch",
    "validation": "validation", "epoch end (records, callbacks)": "epoch end",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2",
                        help="torch thread counts, comma-separated (default 1,2)")
    parser.add_argument("--repeats", type=int, default=5, help="best of N (default 5)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows, profiles = [], {}
    for seeds in (False, True):
        specs = sweep(args.trials, args.epochs, seeds=seeds)
        what = "a seed per trial" if seeds else "one seed"
        for threads in thread_counts:
            print(f"{what}, {threads} threads ...", file=sys.stderr, flush=True)
            lone, packed = run(specs, threads=threads, repeats=args.repeats)
            gap = max_accuracy_gap(specs, lone, packed)
            base = min(lone.times)
            for name, t in ((f"{args.trials} lone fits", lone), ("1 packed fit", packed)):
                rows.append(f"| {what} | {threads} | {name} | {min(t.times):.3f} | "
                            f"{min(t.cpu):.3f} | {len(t.times)} | "
                            f"{args.trials / min(t.times):.1f} | {base / min(t.times):.2f} | "
                            f"{gap:.4f} |")
            profiles[(what, threads)] = (packed.profile, min(packed.times))

    print(f"torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; {args.trials} trials of digits "
          f"64-64-64-10, Adam lr log-spaced 1e-4..1e-1, batch 64, {args.epochs} epochs; "
          f"best of {args.repeats} runs; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after\n")
    print("| sweep | threads | contender | wall s (best) | CPU s | runs | trials/s "
          "| × lone | \\|Δ acc\\| |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))

    keys = list(profiles)
    print("\nWhere the best packed run's time goes (ms):\n")
    print("| phase | " + " | ".join(f"{w}, {t} thr" for w, t in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for phase, label in PHASES.items():
        cells = [f"{profiles[k][0].get(phase, 0.0) * 1e3:.0f}" for k in keys]
        print(f"| {label} | " + " | ".join(cells) + " |")
    rest = [profiles[k][1] - sum(v for p, v in profiles[k][0].items() if p in PHASES)
            for k in keys]
    print("| rest (epoch start, leaving, Python) | "
          + " | ".join(f"{r * 1e3:.0f}" for r in rest) + " |")
    print("| **total (wall)** | " + " | ".join(f"{profiles[k][1] * 1e3:.0f}" for k in keys)
          + " |")
    print(f"\n(total {time.perf_counter() - started:.0f} s; "
          f"python benchmarks/packed_sweep.py --threads {args.threads} "
          f"--repeats {args.repeats} --trials {args.trials} --epochs {args.epochs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
