"""How close `mlp_engine.memory.estimate_training_memory` comes to the memory `fit` takes.

    python benchmarks/memory_estimate.py [--jobs N] [--only NAME ...]

Each shape of `GRID` trains for one epoch in a fresh process (one torch thread), after a
warm-up run of the same spec at a tiny size (lazy imports, kernels); the measured peak is
the process's high-water resident set during the run (`VmHWM`, reset through
/proc/self/clear_refs) minus its resident set before it, as the estimate counts. Shapes
given as arrays (`rows`) are generated in that process after the baseline and passed to
`fit(spec, x, y)`, as the worker passes an uploaded table. Prints a markdown table
(estimate, measured peak, ratio), then the estimates of specs that must be refused. The
grid is also the test's: tests/mlp_engine/test_memory.py. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlp_engine.memory import MemoryEstimate, estimate_from_info  # noqa: E402
from mlp_engine.spec import DatasetInfo, JobSpec, Limits, resolve_spec  # noqa: E402

_MiB = 2**20


@dataclass(frozen=True)
class Shape:
    """One measured job: a spec, and for array data its size (else the spec's builtin)."""

    name: str
    spec: dict[str, Any]
    rows: int | None = None  # array data: rows, features, classes (None: regression)
    features: int = 0
    classes: int | None = None
    stresses: str = ""
    tags: tuple[str, ...] = field(default=())

    def info(self) -> DatasetInfo:
        from mlp_engine.data import builtin_info

        ds = self.spec["dataset"]
        if "builtin" in ds:
            return builtin_info(ds["builtin"], ds.get("params"))
        assert self.rows is not None
        if self.classes is None:
            return DatasetInfo(n_rows=self.rows, n_features=self.features,
                               default_task="regression")
        return DatasetInfo(n_rows=self.rows, n_features=self.features,
                           n_classes=self.classes, class_labels=tuple(range(self.classes)))

    def resolved(self) -> JobSpec:
        return resolve_spec(JobSpec.model_validate(self.spec), self.info(), Limits())

    def estimate(self) -> MemoryEstimate:
        # fit alone: the worker's in-memory checkpoints are not part of the measured run
        return estimate_from_info(self.resolved(), self.info(), checkpoints=False)


def _xor(n: int) -> dict[str, Any]:
    # generated with NumPy: the measuring process need not import scikit-learn
    return {"builtin": "xor", "params": {"n_samples": n}}


_TABLE = {"id": "table"}  # arrays passed to fit, as the worker passes an uploaded table

GRID: tuple[Shape, ...] = (
    Shape("wide, adam", {
        "dataset": _xor(320), "task": "classification",
        "model": {"hidden_dims": [4096, 4096]}, "optimizer": "adam",
        "training": {"epochs": 1, "batch_size": 64}},
        stresses="parameters, gradients, two Adam moments"),
    Shape("wide, sgd", {
        "dataset": _xor(320), "task": "classification",
        "model": {"hidden_dims": [4096, 4096]}, "optimizer": {"name": "sgd"},
        "training": {"epochs": 1, "batch_size": 64}},
        stresses="parameters and gradients only"),
    Shape("wide, rmsprop + momentum, l2", {
        "dataset": _xor(320), "task": "classification",
        "model": {"hidden_dims": [3072, 3072]},
        "optimizer": {"name": "rmsprop", "momentum": 0.9},
        "regularization": {"l2": 1e-4},
        "training": {"epochs": 1, "batch_size": 64}},
        stresses="square averages and momentum, unfused step, penalty gradients"),
    Shape("deep, batch norm + dropout, big batch", {
        "dataset": _xor(20_000), "task": "classification",
        "model": {"hidden_dims": [128] * 32, "batch_norm": True, "dropout": 0.1},
        "training": {"epochs": 1, "batch_size": 16_384}},
        stresses="activations: 4 saved tensors per layer"),
    Shape("gelu + dropout, big batch", {
        "dataset": _xor(81_920), "task": "classification",
        "model": {"hidden_dims": [160] * 6, "activation": "gelu", "dropout": 0.2},
        "training": {"epochs": 1, "batch_size": 65_536}},
        stresses="activations of an input-saving activation"),
    Shape("1000 classes, cross-entropy", {
        "dataset": _TABLE, "task": "classification",
        "model": {"hidden_dims": [64]},
        "training": {"epochs": 1, "batch_size": 16_384}},
        rows=50_000, features=16, classes=1000,
        stresses="logits, log-probabilities and their gradients"),
    Shape("metric learning, 10k-d embedding", {
        "dataset": _xor(150), "task": "metric_learning",
        "model": {"hidden_dims": [64], "output_dim": 10_000},
        "training": {"epochs": 1}},
        stresses="hinge pairs x output_dim (all 2016 pairs of a batch of 64)"),
    Shape("metric learning, 8192 pairs", {
        "dataset": _xor(800), "task": "metric_learning",
        "model": {"hidden_dims": [64], "output_dim": 4096},
        "training": {"epochs": 1, "batch_size": 256}},
        stresses="8192 drawn pairs x output_dim, validation pairs and cdist"),
    Shape("large table, standardised", {
        "dataset": _TABLE, "task": "classification",
        "model": {"hidden_dims": [16]},
        "training": {"epochs": 1, "batch_size": 16_384}},
        rows=300_000, features=128, classes=2,
        stresses="prepare_data: copies, float64 standardiser"),
    Shape("large table, raw, regression", {
        "dataset": _TABLE, "task": "regression",
        "model": {"hidden_dims": [16]},
        "training": {"epochs": 1, "batch_size": 16_384, "standardize": False,
                     "validation_split": 0.0}},
        rows=600_000, features=96,
        stresses="data tensors beside the caller's arrays"),
    Shape("wide validation pass", {
        "dataset": _TABLE, "task": "classification",
        "model": {"hidden_dims": [2048]},
        "training": {"epochs": 1, "batch_size": 512, "validation_split": 0.5}},
        rows=100_000, features=64, classes=10,
        stresses="evaluation: the whole validation split in one forward pass"),
    Shape("diagnostics: ICS + activation stats", {
        "dataset": _xor(800), "task": "classification",
        "model": {"hidden_dims": [2048] * 3},
        "diagnostics": {"internal_covariate_shift": True, "activation_stats": True},
        "training": {"epochs": 1, "batch_size": 256}},
        stresses="the probe copy, G and G' beside the optimiser state"),
)


# --------------------------------------------------------------------------- measurement

_CHILD = r"""
import gc, json, re, sys
cfg = json.loads(sys.argv[1])
import numpy as np
import torch
torch.set_num_threads(1)
if cfg["sklearn"]:
    import sklearn.datasets  # a builtin generator's import, before the baseline
from mlp_engine.training import fit
from mlp_engine.rule_monitor import RuleMonitor

def arrays(rows, features, classes, seed):
    if rows is None:
        return None, None
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    y = (rng.integers(0, classes, rows) if classes is not None
         else rng.standard_normal(rows, dtype=np.float32).astype(np.float64))
    return x, y

def kib(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

fit(cfg["warmup"], *arrays(*cfg["warmup_data"], 1), callbacks=[RuleMonitor()])
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark starts again from here
base = kib("VmRSS")
x, y = arrays(*cfg["data"], 0)
fit(cfg["spec"], x, y, callbacks=[RuleMonitor()])  # the findings rules, as the worker runs
print(json.dumps({"baseline": base, "peak": kib("VmHWM") - base}))
"""


def _warmup(shape: Shape) -> tuple[dict[str, Any], list[Any]]:
    """The same spec (task, loss, optimiser, layers' kinds) at a tiny size, on arrays."""
    spec = json.loads(json.dumps(shape.spec))
    model = spec.setdefault("model", {})
    model["hidden_dims"] = [8] * len(model.get("hidden_dims", [64, 64]))
    if "output_dim" in model:
        model["output_dim"] = 8
    spec["dataset"] = _TABLE
    spec["training"] = {**spec.get("training", {}), "batch_size": 16, "epochs": 1}
    regression = spec.get("task") == "regression"
    return spec, [64, shape.info().n_features, None if regression else 3]


def measure(shape: Shape, *, timeout: float = 240) -> int:
    """Peak bytes `fit` takes for `shape`, above the warm process (see the module doc)."""
    warm_spec, warm_data = _warmup(shape)
    builtin = shape.spec["dataset"].get("builtin")
    cfg = {"spec": shape.spec, "sklearn": builtin not in (None, "xor", "spirals"),
           "warmup": warm_spec, "warmup_data": warm_data,
           "data": [shape.rows, shape.features, shape.classes]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shape.name}: the measuring process failed:\n{proc.stderr[-3000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak"])


def measure_grid(shapes: tuple[Shape, ...] = GRID, *, jobs: int = 2) -> list[tuple[Shape, int]]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(zip(shapes, pool.map(measure, shapes), strict=True))


# --------------------------------------------------------------------------- refused specs


def pathological() -> list[tuple[str, MemoryEstimate]]:
    """The specs of the hardening issue, that validate but could not run on a worker."""
    big = Limits(max_parameters=10**12, max_hidden_layers=1000)
    hinge = JobSpec.model_validate({
        "dataset": {"builtin": "iris"}, "task": "metric_learning",
        "model": {"hidden_dims": [1], "output_dim": 1_000_000}, "training": {"epochs": 1}})
    from mlp_engine.data import builtin_info

    iris = builtin_info("iris")
    deep = JobSpec.model_validate({
        "dataset": {"builtin": "moons", "params": {"n_samples": 200_000}}, "task": "classification",
        "model": {"hidden_dims": [559] * 64, "batch_norm": True, "dropout": 0.1},
        "training": {"epochs": 1, "batch_size": 65_536}})
    moons = builtin_info("moons", {"n_samples": 200_000})
    labels = JobSpec.model_validate({
        "dataset": {"id": "strings"}, "task": "classification",
        "model": {"hidden_dims": [8]}, "training": {"epochs": 1, "batch_size": 65_536}})
    strings = DatasetInfo(n_rows=1_000_000, n_features=8, n_classes=1_000_000,
                          target_numeric=False)
    out = []
    for name, spec, info in (
            ("metric learning, iris, output_dim 1,000,000", hinge, iris),
            ("moons 200k, 64 x 559, batch norm + dropout, batch 65,536", deep, moons),
            ("1,000,000 string classes, batch 65,536", labels, strings)):
        out.append((name, estimate_from_info(resolve_spec(spec, info, big), info)))
    return out


def _mib(n: float) -> str:
    return f"{n / _MiB:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="measuring processes at once")
    parser.add_argument("--only", nargs="*", help="names of shapes to run (substrings)")
    parser.add_argument("--breakdown", action="store_true", help="print each estimate's terms")
    args = parser.parse_args()
    shapes = tuple(s for s in GRID if not args.only or any(o in s.name for o in args.only))
    results = measure_grid(shapes, jobs=args.jobs)
    print("| shape | stresses | estimate MiB | measured peak MiB | ratio | peak phase |")
    print("|---|---|---:|---:|---:|---|")
    for shape, peak in results:
        est = shape.estimate()
        print(f"| {shape.name} | {shape.stresses} | {_mib(est.total_bytes)} | {_mib(peak)} | "
              f"{est.total_bytes / peak:.2f} | {est.peak_phase} |")
    if args.breakdown:
        for shape, _ in results:
            est = shape.estimate()
            terms = ", ".join(f"{k} {_mib(v)}" for k, v in est.breakdown.items() if v)
            print(f"\n{shape.name}: {terms}; phases "
                  + ", ".join(f"{k} {_mib(v)}" for k, v in est.phases.items()))
    print("\n| refused spec | estimate | peak phase | largest terms |")
    print("|---|---:|---|---|")
    for name, est in pathological():
        print(f"| {name} | {est.total_bytes / 2**30:,.1f} GiB | {est.peak_phase} | "
              f"{est.summary()} |")


if __name__ == "__main__":
    main()
