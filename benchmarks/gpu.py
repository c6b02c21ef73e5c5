"""The GPU check: the CUDA tests, then the engine's step time on the GPU against a minimal
CUDA training loop and against the launch-bound floor.

    python benchmarks/gpu.py [--quick] [--skip-tests]

1. `pytest -m cuda --noconftest tests/mlp_engine/test_cuda.py` (reproducible GPU training,
   agreement with the CPU, no host sync inside an epoch, checkpoints and weights moving
   between CPU and GPU).
2. For a small and a large MLP: the engine (`fit` on arrays, no validation split) and a
   minimal loop with the same model, data on the device, `randperm` index slicing and
   fused Adam, timed per step from the median epoch (`torch.cuda.synchronize` at each
   epoch's end); and the floor: one replay of a captured CUDA graph of a single tiny
   kernel, the least a step can cost. Prints a markdown table with the ratio column.

Needs CUDA; exits 2 without it. Runs on a machine with only torch, numpy, scikit-learn,
safetensors and pydantic (what the engine imports).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHAPES = (  # name, rows, features, hidden, classes, batch
    ("small: 64-128-128-10, batch 64", 20_000, 64, [128, 128], 10, 64),
    ("medium: 256-1024-1024-10, batch 512", 200_000, 256, [1024, 1024], 10, 512),
    ("large: 1024-4096-2048-100, batch 4096", 400_000, 1024, [4096, 2048], 100, 4096),
)


def _data(rows: int, features: int, classes: int):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    y = (x @ w).argmax(dim=1)
    return x, y


def engine_step_s(x, y, hidden: list[int], batch: int, epochs: int) -> float:  # type: ignore[no-untyped-def]
    from mlp_engine.training import fit

    spec = {"task": "classification", "model": {"hidden_dims": hidden},
            "training": {"epochs": epochs, "batch_size": batch, "validation_split": 0.0,
                         "standardize": False}}
    result = fit(spec, x.numpy(), y.numpy(), device="cuda")
    steps = -(-x.shape[0] // batch)
    return statistics.median(r["epoch_seconds"] for r in result.history[1:]) / steps


def minimal_step_s(x, y, hidden: list[int], batch: int, epochs: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    dev = torch.device("cuda")
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    width = x.shape[1]
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, int(y.max()) + 1))
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    xd, yd = x.to(dev), y.to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        perm = torch.randperm(xd.shape[0], device=dev)
        total = torch.zeros((), device=dev)
        for start in range(0, xd.shape[0], batch):
            idx = perm[start:start + batch]
            loss = loss_fn(model(xd[idx]), yd[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        total.item()
        times.append(time.perf_counter() - t)
    steps = -(-x.shape[0] // batch)
    return statistics.median(times[1:]) / steps


def floor_step_s(replays: int = 2000) -> float:
    """One replay of a captured graph of one tiny kernel: the launch-bound floor."""
    import torch

    a = torch.zeros(1, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        a.add_(1)  # warm-up on the side stream, as graph capture wants
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        a.add_(1)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / replays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, two shapes")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here", file=sys.stderr)
        return 2
    status = 0
    if not args.skip_tests:
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "cuda",
                                  "--noconftest", "-p", "no:cacheprovider", "-rfEs",
                                  str(ROOT / "tests" / "mlp_engine" / "test_cuda.py")],
                                 cwd=ROOT)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}\n")
    floor = floor_step_s()
    print("| MLP | engine ms/step | minimal loop ms/step | engine / minimal | "
          "floor ms (graph replay) |")
    print("|---|---:|---:|---:|---:|")
    shapes = SHAPES[:2] if args.quick else SHAPES
    for name, rows, features, hidden, classes, batch in shapes:
        x, y = _data(rows, features, classes)
        epochs = 3 if args.quick else 5
        minimal = minimal_step_s(x, y, hidden, batch, epochs)
        engine = engine_step_s(x, y, hidden, batch, epochs)
        print(f"| {name} | {engine * 1e3:.3f} | {minimal * 1e3:.3f} | "
              f"{engine / minimal:.2f} | {floor * 1e3:.4f} |", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
