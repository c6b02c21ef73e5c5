"""Everything before the first epoch: load the data (or take arrays), resolve the spec
against it, encode the targets, split, standardise, and put the tensors on the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import (
    LoadedData,
    Standardizer,
    builtin_info,
    describe,
    encode_targets,
    load_dataset,
    split_indices,
)
from .errors import SpecError
from .losses import prepare_targets
from .spec import JobSpec, Limits, resolve_spec

__all__ = ["PreparedData", "prepare_data", "DataSource", "load_source"]


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
    """Arrays, tensors or pandas objects as a dataset; a DataFrame's columns (and a Series'
    or DataFrame's target names) name the features and targets, else x0.., y0.."""
    if y is None:
        raise SpecError("fit got x without y", field="y")
    feature_names = [str(c) for c in getattr(x, "columns", ())]
    target_names = ([str(c) for c in y.columns] if hasattr(y, "columns")
                    else [str(y.name)] if getattr(y, "name", None) is not None else [])
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
    if len(feature_names) != xa.shape[1]:
        feature_names = [f"x{i}" for i in range(xa.shape[1])]
    if len(target_names) != (1 if ya.ndim == 1 else ya.shape[1]):
        target_names = ["y"] if ya.ndim == 1 else [f"y{i}" for i in range(ya.shape[1])]
    return LoadedData(x=xa, y=ya, feature_names=feature_names, target_names=target_names)


@dataclass(frozen=True)
class DataSource:
    """A job's rows as loaded, before the spec touches them, and the task a builtin
    dataset implies (None for others)."""

    data: LoadedData
    default_task: str | None


def load_source(spec: JobSpec, x: Any = None, y: Any = None) -> DataSource:
    """The rows of `x`, `y` when given, else of the spec's dataset (seeded by the spec)."""
    if x is not None:
        return DataSource(_as_loaded(x, y), None)
    if spec.dataset is None:  # an ArrayJobSpec, which has its data only as arrays
        raise SpecError("the spec has no dataset: give one, or pass x and y to fit",
                        field="dataset")
    data = load_dataset(spec.dataset, seed=spec.training.seed)
    default_task = (builtin_info(spec.dataset.builtin, spec.dataset.params).default_task
                    if spec.dataset.builtin else None)
    return DataSource(data, default_task)


def prepare_data(spec: JobSpec, x: Any = None, y: Any = None, *, device: torch.device,
                 limits: Limits | None = None, source: DataSource | None = None
                 ) -> PreparedData:
    """Load, resolve, encode, split and standardise: everything before the first epoch.
    `source`: the rows `load_source(spec, x, y)` gives, loaded already (several trials of a
    pack share them); it is only read."""
    seed = spec.training.seed
    if source is None:
        source = load_source(spec, x, y)
    data = source.data
    info = describe(data, default_task=source.default_task)
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

