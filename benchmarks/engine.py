"""How much the engine's training loop costs next to hand-written PyTorch and scikit-learn.

    python benchmarks/engine.py [--quick] [--threads N] [--repeats N] [--repeat-under S]

Every contender trains the same ReLU MLP (torch_default init, Adam lr 1e-3, no weight
decay, no dropout, no batch norm) for the same epochs and batch size on the same training
split (80% of the rows, stratified for classes), standardised once here, regression
targets too, so that no contender spends time on it; each is then scored on the same
held-out 20%. Contenders:

- ``engine``: ``mlp_engine.fit`` (diagnostics off, validation_split 0, standardize off);
- ``minimal, fused Adam``: data as tensors in memory, ``torch.randperm``, index slicing,
  ``torch.optim.Adam(..., fused=True)``; the yardstick of the ratio column;
- ``minimal, default Adam``: the same loop with PyTorch's default Adam (on CPU the
  per-parameter for-loop implementation);
- ``DataLoader``: ``TensorDataset`` + ``DataLoader(shuffle=True)``, fused Adam;
- ``scikit-learn``: ``MLPClassifier`` / ``MLPRegressor`` (solver adam, alpha 0, same
  sizes, batch and learning rate, every epoch run: tol 0, no early stopping). Its own
  initialisation (Glorot) and float32 input, since sklearn keeps the input dtype.

Wall seconds cover building the model and training: the best of N runs (3, or 1 with
--quick), except that a contender is run again only while its best run so far took less
than --repeat-under seconds (8), which keeps the default run near five minutes on two
cores; the table says how many runs each row had. Data generation, standardisation and
scoring are outside the clock. The minimal and DataLoader loops sum the training loss on
the device and read it once per epoch, as the engine does for its per-epoch record.
Other work on the machine shows up in these numbers (the header gives the load average);
the CPU column (process time, all threads) suffers less from it than wall time does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from threadpoolctl import threadpool_limits
from torch import nn

# Run from a checkout without installing: `python benchmarks/engine.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LR = 1e-3
SEED = 0
YARDSTICK = "minimal, fused Adam"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    task: str  # "classification" or "regression"
    hidden: tuple[int, ...]
    epochs: int
    batch_size: int
    x_train: np.ndarray  # float32, standardised
    y_train: np.ndarray  # int64 labels, or float32 targets (standardised)
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def output_dim(self) -> int:
        return int(self.y_train.max()) + 1 if self.task == "classification" else 1

    @property
    def shape(self) -> str:
        widths = [self.x_train.shape[1], *self.hidden, self.output_dim]
        return "-".join(map(str, widths))


@dataclasses.dataclass
class Row:
    case: str
    contender: str
    seconds: float  # the best run
    cpu_seconds: float  # the least CPU time (all threads) of any run
    runs: int
    score: float
    note: str = ""


# --- data ---------------------------------------------------------------------------------


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # digits has constant pixels
    return (
        ((train - mean) / std).astype(np.float32),
        ((test - mean) / std).astype(np.float32),
    )


def _case(
    name: str,
    task: str,
    hidden: tuple[int, ...],
    *,
    epochs: int,
    batch_size: int,
    x: np.ndarray,
    y: np.ndarray,
) -> Case:
    """Split 80/20 (stratified for classes), standardise on the training part."""
    classes = task == "classification"
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y if classes else None
    )
    x_tr, x_te = _standardise(x_tr, x_te)
    if classes:
        y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    else:
        y_tr, y_te = (a[:, 0] for a in _standardise(y_tr[:, None], y_te[:, None]))
    return Case(name, task, hidden, epochs, batch_size, x_tr, y_tr, x_te, y_te)


def make_cases(quick: bool) -> list[Case]:
    digits = load_digits()
    rows = 20_000 if quick else 200_000
    epochs = 2 if quick else 5
    x_cls, y_cls = make_classification(
        n_samples=rows,
        n_features=64,
        n_informative=32,
        n_redundant=8,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=1.5,
        random_state=SEED,
    )
    x_reg, y_reg = make_regression(
        n_samples=rows, n_features=32, n_informative=16, noise=10.0, random_state=SEED
    )
    y_reg = np.tanh(y_reg / 100.0) * 100.0  # a little non-linearity, so depth has work to do
    return [
        _case(
            "digits",
            "classification",
            (128, 128),
            epochs=10 if quick else 50,
            batch_size=64,
            x=digits.data,
            y=digits.target,
        ),
        _case(
            f"classification {rows:,}×64",
            "classification",
            (256, 256),
            epochs=epochs,
            batch_size=256,
            x=x_cls,
            y=y_cls,
        ),
        _case(
            f"regression {rows:,}×32",
            "regression",
            (128, 128),
            epochs=epochs,
            batch_size=256,
            x=x_reg,
            y=y_reg,
        ),
    ]


# --- scoring ------------------------------------------------------------------------------


def score(case: Case, predictions: np.ndarray) -> float:
    """Accuracy for classification (class indices), R² for regression."""
    if case.task == "classification":
        return float((predictions == case.y_test).mean())
    residual = ((case.y_test - predictions) ** 2).sum()
    total = ((case.y_test - case.y_test.mean()) ** 2).sum()
    return float(1.0 - residual / total)


@torch.no_grad()
def predict_torch(model: nn.Module, case: Case) -> np.ndarray:
    model.eval()
    out = model(torch.from_numpy(case.x_test))  # (N, k)
    if case.task == "classification":
        return out.argmax(dim=1).numpy()
    return out.reshape(-1).numpy()


# --- contenders ---------------------------------------------------------------------------


def build_mlp(case: Case) -> nn.Sequential:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    widths = [case.x_train.shape[1], *case.hidden]
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], case.output_dim))
    return nn.Sequential(*layers)


def _loss_fn(case: Case) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if case.task == "classification":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.squeeze(-1), y)


def minimal_loop(case: Case, *, fused: bool) -> nn.Module:
    """The loop a PyTorch user writes by hand: tensors in memory, a permutation, slices."""
    model = build_mlp(case)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=fused or None)
    loss_fn = _loss_fn(case)
    x = torch.from_numpy(case.x_train)  # (N, n0)
    y = torch.from_numpy(case.y_train)  # (N,)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(case.epochs):
        perm = torch.randperm(n, generator=gen)
        total = torch.zeros(())
        for start in range(0, n, case.batch_size):
            idx = perm[start : start + case.batch_size]
            xb, yb = x[idx], y[idx]  # (B, n0), (B,)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * xb.shape[0]
        _ = (total / n).item()  # the epoch's train loss, read once
    return model


def dataloader_loop(case: Case) -> nn.Module:
    """The tutorial loop: TensorDataset + DataLoader(shuffle=True), fused Adam."""
    model = build_mlp(case)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    loss_fn = _loss_fn(case)
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(case.x_train), torch.from_numpy(case.y_train)
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=case.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    n = len(dataset)
    model.train()
    for _ in range(case.epochs):
        total = torch.zeros(())
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * xb.shape[0]
        _ = (total / n).item()
    return model


def sklearn_fit(case: Case) -> Any:
    kind = MLPClassifier if case.task == "classification" else MLPRegressor
    est = kind(
        hidden_layer_sizes=case.hidden,
        activation="relu",
        solver="adam",
        alpha=0.0,
        batch_size=case.batch_size,
        learning_rate_init=LR,
        max_iter=case.epochs,
        shuffle=True,
        random_state=SEED,
        tol=0.0,
        n_iter_no_change=10**9,
        early_stopping=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(case.x_train, case.y_train)
    return est


def engine_spec(case: Case) -> Any:
    from mlp_engine import JobSpec

    return JobSpec.model_validate(
        {
            # x and y given to fit replace the dataset; the spec only needs a valid one.
            "dataset": {"builtin": "digits"},
            "task": case.task,
            "loss": "cross_entropy" if case.task == "classification" else "mse",
            "model": {
                "hidden_dims": list(case.hidden),
                "activation": "relu",
                "init": "torch_default",
                "dropout": 0.0,
                "batch_norm": False,
            },
            "optimizer": {"name": "adam", "lr": LR},
            "training": {
                "epochs": case.epochs,
                "batch_size": case.batch_size,
                "validation_split": 0.0,
                "standardize": False,
                "seed": SEED,
            },
            "device": "cpu",
        }
    )


def engine_fit(case: Case, threads: int | None) -> Any:
    from mlp_engine import fit

    return fit(engine_spec(case), case.x_train, case.y_train, device="cpu", num_threads=threads)


def engine_predict(result: Any, case: Case) -> np.ndarray:
    raw = predict_torch(result.model, case)
    labels = (result.preprocessing or {}).get("class_labels")
    if case.task == "classification" and labels is not None:
        raw = np.asarray(labels)[raw].astype(np.int64)  # output index → original label
    if case.task == "regression":
        # In case the engine standardised the target although asked not to.
        pre = result.preprocessing or {}
        y_mean, y_std = pre.get("y_mean"), pre.get("y_std")
        if y_mean is not None and y_std is not None:
            raw = raw * np.asarray(y_std).reshape(-1) + np.asarray(y_mean).reshape(-1)
    return raw


# --- timing -------------------------------------------------------------------------------


@dataclasses.dataclass
class Contender:
    name: str
    train: Callable[[], Any]
    predict: Callable[[Any], np.ndarray]
    note: str = ""
    times: list[float] = dataclasses.field(default_factory=list)
    cpu_times: list[float] = dataclasses.field(default_factory=list)
    out: Any = None


def warm_up(case: Case) -> None:
    """A few untimed steps, so the first contender does not pay for torch's first calls."""
    small = dataclasses.replace(
        case,
        epochs=1,
        x_train=case.x_train[: case.batch_size * 8],
        y_train=case.y_train[: case.batch_size * 8],
    )
    minimal_loop(small, fused=True)
    minimal_loop(small, fused=False)


def contenders(case: Case, threads: int | None) -> list[Contender]:
    out = []
    try:
        from mlp_engine import fit  # noqa: F401
    except ImportError as exc:
        print(f"engine not available: {exc}", file=sys.stderr)
    else:
        out.append(
            Contender(
                "engine", lambda: engine_fit(case, threads), lambda res: engine_predict(res, case)
            )
        )
    out += [
        Contender(
            YARDSTICK, lambda: minimal_loop(case, fused=True), lambda m: predict_torch(m, case)
        ),
        Contender(
            "minimal, default Adam",
            lambda: minimal_loop(case, fused=False),
            lambda m: predict_torch(m, case),
        ),
        Contender(
            "DataLoader, fused Adam",
            lambda: dataloader_loop(case),
            lambda m: predict_torch(m, case),
        ),
        Contender(
            "scikit-learn",
            lambda: sklearn_fit(case),
            lambda est: est.predict(case.x_test),
            "Glorot init",
        ),
    ]
    return out


def run_case(
    case: Case,
    *,
    repeats: int,
    repeat_under_s: float,
    threads: int | None,
    log: Callable[[str], None],
) -> list[Row]:
    """Best of `repeats` runs per contender, in rounds (every contender once per round) so
    that a burst of load elsewhere on the machine spreads over all of them; a contender
    whose best run so far took `repeat_under_s` or more sits out the later rounds."""
    warm_up(case)
    field = contenders(case, threads)
    for round_ in range(repeats):
        for c in field:
            if round_ > 0 and min(c.times) >= repeat_under_s:
                continue
            start, cpu_start = time.perf_counter(), time.process_time()
            c.out = c.train()
            c.times.append(time.perf_counter() - start)
            c.cpu_times.append(time.process_time() - cpu_start)
            log(f"  {case.name}: {c.name}: {c.times[-1]:.2f} s, {c.cpu_times[-1]:.2f} s CPU")
    return [
        Row(
            case.name,
            c.name,
            min(c.times),
            min(c.cpu_times),
            len(c.times),
            score(case, c.predict(c.out)),
            c.note,
        )
        for c in field
    ]


def table(cases: list[Case], rows: list[Row]) -> str:
    lines = [
        "| dataset | contender | wall s (best) | CPU s | runs | test score | × fused minimal |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        mine = [r for r in rows if r.case == case.name]
        base = next((r.seconds for r in mine if r.contender == YARDSTICK), float("nan"))
        metric = "accuracy" if case.task == "classification" else "R²"
        for r in mine:
            ratio = r.seconds / base
            note = f" ({r.note})" if r.note else ""
            lines.append(
                f"| {case.name} ({case.shape}, batch {case.batch_size}, {case.epochs} ep) "
                f"| {r.contender}{note} | {r.seconds:.2f} | {r.cpu_seconds:.2f} | {r.runs} | {metric} {r.score:.4f} "
                f"| {ratio:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rows and epochs, one repeat (under a minute)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch (and BLAS) threads; default: torch's default",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="best of N (default 3, 1 with --quick)"
    )
    parser.add_argument(
        "--repeat-under",
        type=float,
        default=8.0,
        metavar="S",
        help="repeat a contender only while its best run took under S seconds (default 8)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    cases = make_cases(args.quick)
    rows: list[Row] = []
    # sklearn's matrix products run on numpy's BLAS; hold it to the same thread count.
    with threadpool_limits(limits=threads):
        for case in cases:
            rows += run_case(
                case,
                repeats=repeats,
                repeat_under_s=args.repeat_under,
                threads=args.threads,
                log=log,
            )

    print(
        f"torch {torch.__version__}, {threads} threads, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; best of up to {repeats} runs "
        f"(repeated while under {args.repeat_under:g} s); Adam lr {LR}; seed {SEED}"
        f"{'; --quick' if args.quick else ''}; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after\n"
    )
    print(table(cases, rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
