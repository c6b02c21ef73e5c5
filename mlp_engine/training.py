"""`fit`: train the MLP a spec describes, with callbacks, early stopping and resumption.

The hot loop keeps the training set as one tensor on the device, takes batches by index
slicing of a seeded permutation, accumulates the loss on the device and crosses to Python
once per epoch. Everything else (metrics, diagnostics, callbacks) runs between epochs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .callbacks import Callback, TrainState
from .data import (
    LoadedData,
    Standardizer,
    builtin_info,
    describe,
    encode_targets,
    load_dataset,
    split_indices,
)
from .diagnostics import epoch_diagnostics
from .errors import DivergedError, SpecError, TimeLimitExceeded, TrainingError
from .losses import make_loss, prepare_targets, regularization
from .metrics import EvalSet, evaluate
from .model import MLP, _construct, build_model
from .registry import OPTIMIZERS, SCHEDULERS
from .spec import JobSpec, Limits, resolve_spec

__all__ = ["fit", "FitResult", "TimeLimit", "seed_everything", "pick_device",
           "make_optimizer", "make_scheduler", "CHECKPOINT_FORMAT", "prepare_data",
           "PreparedData"]

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "mlp_engine.checkpoint/1"
_FUSED = ("sgd", "adam", "adamw")  # optimisers with a fused CPU/CUDA implementation


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (and CUDA) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(asked: str, override: str | None = None) -> torch.device:
    want = override or asked
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but CUDA is not available here")
    return torch.device(want)


class TimeLimit(Callback):
    """Stops training once `max_runtime_s` seconds of it have passed (checked per batch)."""

    def __init__(self, max_runtime_s: float) -> None:
        self.max_runtime_s = max_runtime_s
        self.deadline = math.inf

    def on_train_begin(self, state: TrainState) -> None:
        self.deadline = time.monotonic() + self.max_runtime_s

    def on_batch_end(self, state: TrainState) -> None:
        if time.monotonic() > self.deadline:
            raise TimeLimitExceeded(f"exceeded max_runtime_s ({self.max_runtime_s:g} s) "
                                    f"in epoch {state.epoch + 1}")


def make_optimizer(spec: JobSpec, model: torch.nn.Module, device: torch.device
                   ) -> torch.optim.Optimizer:
    opt = spec.optimizer
    params = dict(opt.params)
    if "beta1" in params:
        params["betas"] = (params.pop("beta1"), params.pop("beta2"))
    if opt.name in _FUSED:
        params["fused"] = True  # one kernel per step instead of one per tensor
    return _construct(OPTIMIZERS[opt.name].target, params=model.parameters(), **params)


def make_scheduler(spec: JobSpec, optimizer: torch.optim.Optimizer) -> Any:
    sched = spec.optimizer.scheduler
    if sched is None:
        return None
    params = dict(sched.params)
    if sched.name == "cosine":
        params = {"T_max": params["t_max"] or spec.training.epochs, "eta_min": params["eta_min"]}
    elif sched.name == "reduce_on_plateau":
        params.pop("metric")
    return _construct(SCHEDULERS[sched.name].target, optimizer=optimizer, **params)


@dataclass
class PreparedData:
    """Tensors on the device and what prediction needs to repeat the preprocessing."""

    spec: JobSpec  # resolved
    x_train: torch.Tensor
    y_train: torch.Tensor  # loss targets
    train_metric: torch.Tensor  # metric targets (class index, 0/1 rows, original units)
    x_val: torch.Tensor
    y_val: torch.Tensor
    val_metric: torch.Tensor
    preprocessing: dict[str, Any]
    y_scale: tuple[torch.Tensor, torch.Tensor] | None


def _as_loaded(x: Any, y: Any) -> LoadedData:
    if y is None:
        raise SpecError("fit got x without y", field="y")
    xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if xa.ndim != 2 or xa.shape[0] != ya.shape[0]:
        raise SpecError(f"x must be 2-D with as many rows as y; got x {xa.shape}, y {ya.shape}",
                        field="x")
    xa = xa.astype(np.float32)
    if not np.isfinite(xa).all():
        raise SpecError("x holds NaN or infinite values", field="x")
    if ya.dtype.kind == "U":
        ya = ya.astype(object)
    return LoadedData(x=xa, y=ya, feature_names=[f"x{i}" for i in range(xa.shape[1])],
                      target_names=["y"] if ya.ndim == 1 else [f"y{i}" for i in
                                                              range(ya.shape[1])])


def prepare_data(spec: JobSpec, x: Any = None, y: Any = None, *, device: torch.device,
                 limits: Limits | None = None) -> PreparedData:
    """Load, resolve, encode, split and standardise: everything before the first epoch."""
    seed = spec.training.seed
    if x is not None:
        data = _as_loaded(x, y)
        default_task = None
    else:
        data = load_dataset(spec.dataset, seed=seed)
        default_task = (builtin_info(spec.dataset.builtin, spec.dataset.params).default_task
                        if spec.dataset.builtin else None)
    info = describe(data, default_task=default_task)
    resolved = resolve_spec(spec, info, limits)
    task = resolved.task
    assert task is not None
    y_enc = encode_targets(data.y, task=task, class_labels=info.class_labels)
    classes = task in ("classification", "metric_learning")
    train_idx, val_idx = split_indices(data.x.shape[0], validation_split=(
        resolved.training.validation_split), seed=seed, stratify=y_enc if classes else None)

    x_tr, x_va = data.x[train_idx], data.x[val_idx]
    standardizer = Standardizer.fit(x_tr) if resolved.training.standardize else None
    if standardizer is not None:
        x_tr, x_va = standardizer.transform(x_tr), standardizer.transform(x_va)
    y_tr, y_va = y_enc[train_idx], y_enc[val_idx]
    y_scale = None
    y_mean = y_std = None
    if task == "regression" and resolved.training.standardize:
        y_mean = y_tr.mean(axis=0).astype(np.float32)
        y_std = y_tr.std(axis=0).astype(np.float32)
        y_std[y_std < 1e-12] = 1.0
        y_scale = (torch.as_tensor(y_mean, device=device), torch.as_tensor(y_std, device=device))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), device=device)

    def loss_targets(a: np.ndarray) -> torch.Tensor:
        if y_mean is not None:
            a = (a - y_mean) / y_std
        return prepare_targets(resolved, t(a))

    preprocessing = {
        "task": task,
        "standardize": standardizer is not None,
        "x_mean": standardizer.mean.tolist() if standardizer is not None else None,
        "x_std": standardizer.std.tolist() if standardizer is not None else None,
        "y_mean": y_mean.tolist() if y_mean is not None else None,
        "y_std": y_std.tolist() if y_std is not None else None,
        "class_labels": list(info.class_labels) if classes and info.class_labels else None,
        "feature_names": list(data.feature_names),
        "target_names": list(data.target_names),
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
    }
    return PreparedData(spec=resolved, x_train=t(x_tr), y_train=loss_targets(y_tr),
                        train_metric=t(y_tr), x_val=t(x_va), y_val=loss_targets(y_va),
                        val_metric=t(y_va), preprocessing=preprocessing, y_scale=y_scale)


@dataclass
class FitResult:
    """What `fit` returns: the trained model (eval mode) and its per-epoch history."""

    model: MLP
    history: list[dict[str, Any]]
    spec: JobSpec
    preprocessing: dict[str, Any]
    device: str
    best_epoch: int | None = None
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class _EarlyStopping:
    def __init__(self, spec: JobSpec) -> None:
        self.cfg = spec.training.early_stopping
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def metric_of(self, record: dict[str, Any]) -> tuple[str, float] | None:
        if self.cfg is None:
            return None
        name = self.cfg.metric
        if name not in record:  # no validation rows: fall back to the training loss
            name = "train_loss"
        return name, record[name]

    def update(self, record: dict[str, Any], model: torch.nn.Module) -> bool:
        """Record the epoch; True when training should stop."""
        got = self.metric_of(record)
        if got is None:
            return False
        name, value = got
        sign = 1.0 if name.endswith(("loss", "mae")) else -1.0  # minimise losses, maximise scores
        assert self.cfg is not None
        if self.best is None or sign * (value - self.best) < -self.cfg.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, record["epoch"], 0
            if self.cfg.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs > self.cfg.patience

    def to_json(self) -> str:
        return json.dumps({"best": self.best, "best_epoch": self.best_epoch,
                           "bad_epochs": self.bad_epochs})

    def load(self, blob: str, best_state: dict[str, torch.Tensor] | None) -> None:
        d = json.loads(blob)
        self.best, self.best_epoch, self.bad_epochs = d["best"], d["best_epoch"], d["bad_epochs"]
        self.best_state = best_state or None


def _overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook) is not getattr(Callback, hook)


def fit(spec: JobSpec | dict[str, Any], x: Any = None, y: Any = None, *,
        callbacks: Sequence[Callback] = (), resume: dict[str, Any] | None = None,
        device: str | None = None, num_threads: int | None = None,
        limits: Limits | None = None) -> FitResult:
    """Train the model a spec describes and return it with its history.

    `x`, `y` (arrays or tensors) replace the spec's dataset. `resume` is a dict from
    `TrainState.checkpoint()` (saved with torch.save, loaded with weights_only=True): the
    run continues after its epoch and ends with the same weights as an uninterrupted run.
    A callback stops training by raising a `TrainingStopped` error, which `fit` re-raises
    after `on_train_end`; a NaN or infinite loss raises `DivergedError`.
    """
    if not isinstance(spec, JobSpec):
        spec = JobSpec.model_validate(spec)
    if num_threads:
        torch.set_num_threads(num_threads)
    dev = pick_device(spec.device, device)
    seed_everything(spec.training.seed)
    data = prepare_data(spec, x, y, device=dev, limits=limits)
    spec = data.spec
    tr = spec.training
    task = spec.task
    assert task is not None and spec.loss is not None

    model = build_model(spec).to(dev)
    optimizer = make_optimizer(spec, model, dev)
    scheduler = make_scheduler(spec, optimizer)
    gen = torch.Generator().manual_seed(tr.seed)
    loss_fn = make_loss(spec, data.y_train, generator=gen)
    # diagnostics draw hinge pairs from the (forked) global RNG, never from the training `gen`
    diag_loss_fn = make_loss(spec, data.y_train) if spec.diagnostics.any else loss_fn
    early = _EarlyStopping(spec)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume is not None:
        start_epoch = _restore(resume, model=model, optimizer=optimizer, scheduler=scheduler,
                               gen=gen, early=early, history=history, device=dev)

    def checkpoint() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": state.epoch,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "rng_torch": torch.get_rng_state(),
            "rng_generator": gen.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
            "history": json.dumps(history),
            "early_stopping": early.to_json(),
            "best_model": early.best_state or {},
            "spec": spec.model_dump_json(),
        }

    state = TrainState(spec=spec, model=model, optimizer=optimizer, epoch=start_epoch,
                       history=history, preprocessing=data.preprocessing, device=str(dev),
                       _checkpoint_fn=checkpoint)
    cbs: list[Callback] = [TimeLimit(tr.max_runtime_s), *callbacks]
    batch_cbs = [cb for cb in cbs if _overrides(cb, "on_batch_end")]
    params = list(model.parameters())
    reg = spec.regularization
    metric_learning = task == "metric_learning"
    hinge = spec.loss.params if metric_learning else {}
    n = data.x_train.shape[0]
    if spec.model.batch_norm and n < 2:
        raise SpecError(f"model.batch_norm needs at least 2 training rows; the data leaves {n} "
                        "after the validation split", field="model.batch_norm")
    bs = min(tr.batch_size, n)
    # BatchNorm cannot normalise a batch of one row: drop such a last batch
    drop_last_single = spec.model.batch_norm and n % bs == 1
    stopped_early = False
    error: BaseException | None = None
    x_train, y_train = data.x_train, data.y_train
    train_eval = EvalSet(data.x_train, data.y_train, data.train_metric)
    val_eval = EvalSet(data.x_val, data.y_val, data.val_metric)

    try:
        for cb in cbs:
            cb.on_train_begin(state)
        for epoch in range(start_epoch + 1, tr.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            end = n - 1 if drop_last_single else n
            loss_sum = torch.zeros((), device=dev)
            state.batch = 0
            for start in range(0, end, bs):
                idx = perm[start:start + bs]
                out = model(x_train[idx])  # (B, d_out)
                loss = loss_fn(out, y_train[idx])
                penalty = regularization(params, l1=reg.l1, l2=reg.l2)  # None when both are 0
                total = loss if penalty is None else loss + penalty
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if tr.gradient_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, tr.gradient_clip_norm)
                optimizer.step()
                loss_sum.add_(loss.detach(), alpha=idx.shape[0])
                state.batch += 1
                for cb in batch_cbs:
                    cb.on_batch_end(state)
            lr = optimizer.param_groups[0]["lr"]
            train_loss = loss_sum.item() / end
            if not math.isfinite(train_loss):
                raise DivergedError(epoch, train_loss)
            record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
            model.eval()
            if data.x_val.shape[0] > 0:
                record.update(evaluate(
                    model, val_eval, task=task, loss_fn=loss_fn, y_scale=data.y_scale,
                    reference=train_eval, margin=hinge.get("margin", 1.0),
                    p=1 if hinge.get("distance") == "l1" else 2))
                if not math.isfinite(record["val_loss"]):
                    raise DivergedError(epoch, record["val_loss"])
            if spec.diagnostics.any:
                model.train()
                record.update(epoch_diagnostics(spec, model, x_train=x_train, y_train=y_train,
                                                loss_fn=diag_loss_fn, lr=lr, epoch=epoch))
                model.eval()
            seconds = time.perf_counter() - t0
            record.update({"lr": lr, "epoch_seconds": seconds,
                           "samples_per_second": end / seconds if seconds > 0 else None})
            if scheduler is not None:
                if spec.optimizer.scheduler.name == "reduce_on_plateau":  # type: ignore[union-attr]
                    name = spec.optimizer.scheduler.params["metric"]  # type: ignore[union-attr]
                    scheduler.step(record.get(name, record["train_loss"]))
                else:
                    scheduler.step()
            stop = early.update(record, model)
            history.append(record)
            state.epoch = epoch
            for cb in cbs:
                cb.on_epoch_end(state, record)
            if stop:
                stopped_early = True
                break
    except BaseException as exc:
        error = exc
        raise
    finally:
        model.eval()
        for cb in cbs:
            try:
                cb.on_train_end(state, error)
            except Exception:  # a failing callback must not hide the training error
                if error is None:
                    raise
                log.exception("on_train_end failed after %r", error)

    if early.cfg is not None and early.cfg.restore_best and early.best_state is not None:
        model.load_state_dict(early.best_state)
    # like load_model's module, so inference.predict(result.model, x) works on it directly
    model.spec = spec  # type: ignore[assignment]
    model.preprocessing = data.preprocessing  # type: ignore[assignment]
    return FitResult(model=model, history=history, spec=spec, preprocessing=data.preprocessing,
                     device=str(dev), best_epoch=early.best_epoch, stopped_early=stopped_early)


def _restore(ckpt: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, gen: torch.Generator, early: _EarlyStopping,
             history: list[dict[str, Any]], device: torch.device) -> int:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"not a checkpoint of this engine (format {ckpt.get('format')!r})")
    model.load_state_dict({k: v.to(device) for k, v in ckpt["model"].items()})
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng_torch"])
    gen.set_state(ckpt["rng_generator"])
    if device.type == "cuda" and ckpt.get("rng_cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
    history.extend(json.loads(ckpt["history"]))
    best = {k: v.to(device) for k, v in (ckpt.get("best_model") or {}).items()}
    early.load(ckpt["early_stopping"], best)
    return int(ckpt["epoch"])
