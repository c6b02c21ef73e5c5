"""Per-epoch evaluation metrics, computed on the device and brought to Python once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .losses import hinge_embedding_pairs, pair_distances

__all__ = ["EvalSet", "evaluate", "score", "forward_chunked"]

_CHUNK = 65_536
_REFERENCE_ROWS = 4096  # training rows metric_learning's 1-NN accuracy compares against


@dataclass
class EvalSet:
    """Rows to evaluate on: inputs, loss targets, and metric targets (class index, 0/1 rows,
    or regression targets in original units)."""

    x: torch.Tensor
    y_loss: torch.Tensor
    y_metric: torch.Tensor


def forward_chunked(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i:i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)])


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: EvalSet, *, task: str,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], prefix: str = "val",
             y_scale: tuple[torch.Tensor, torch.Tensor] | None = None,
             reference: EvalSet | None = None, margin: float = 1.0, p: int = 2
             ) -> dict[str, float]:
    """Loss and task metrics of `model` (in eval mode) on `data`.

    classification: accuracy; multilabel: micro-F1 and subset accuracy; regression: R²,
    MAE, MSE and RMSE in the target's original units (`y_scale` = mean, std undoes
    standardisation); metric_learning: pair accuracy (same class iff distance < margin/2)
    and 1-NN accuracy against `reference` embeddings (training rows). `metric_table.METRICS`
    describes each.
    """
    out = forward_chunked(model, data.x)
    reference_out = None
    if task == "metric_learning" and reference is not None and reference.x.shape[0] > 0:
        reference_out = forward_chunked(model, reference.x[:_REFERENCE_ROWS])
    return score(out, data, task=task, loss_fn=loss_fn, prefix=prefix, y_scale=y_scale,
                 reference=reference, reference_out=reference_out, margin=margin, p=p)


@torch.no_grad()
def score(out: torch.Tensor, data: EvalSet, *, task: str,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], prefix: str = "val",
          y_scale: tuple[torch.Tensor, torch.Tensor] | None = None,
          reference: EvalSet | None = None, reference_out: torch.Tensor | None = None,
          margin: float = 1.0, p: int = 2, loss: torch.Tensor | None = None
          ) -> dict[str, float]:
    """`evaluate`'s metrics from the model's outputs on `data.x` (eval mode), computed
    elsewhere; for metric_learning's 1-NN accuracy, `reference_out` are the outputs on the
    first `_REFERENCE_ROWS` rows of `reference.x`. `loss`: `loss_fn(out, data.y_loss)`, when
    computed already (the packed trainer computes it for all its trials at once)."""
    stats: dict[str, torch.Tensor] = {}
    if task == "metric_learning":
        gen = torch.Generator().manual_seed(0)  # fixed pairs, never the training RNG
        i, j, target = hinge_embedding_pairs(data.y_metric, gen)
        d = pair_distances(out, i, j, p)
        stats["loss"] = torch.nn.functional.hinge_embedding_loss(d, target, margin=margin)
        stats["pair_accuracy"] = ((d < margin / 2) == (target > 0)).float().mean()
        if reference is not None and reference_out is not None:
            nearest = torch.cdist(out, reference_out).argmin(dim=1)
            stats["knn_accuracy"] = (reference.y_metric[:reference_out.shape[0]][nearest]
                                     == data.y_metric).float().mean()
    else:
        stats["loss"] = loss_fn(out, data.y_loss) if loss is None else loss
        if task == "classification":
            stats["accuracy"] = (out.argmax(dim=1) == data.y_metric).float().mean()
        elif task == "multilabel":
            pred = out > 0
            truth = data.y_metric > 0.5
            tp = (pred & truth).sum()
            stats["f1_micro"] = 2 * tp / (pred.sum() + truth.sum()).clamp(min=1)
            stats["subset_accuracy"] = (pred == truth).all(dim=1).float().mean()
        elif task == "regression":
            pred = out if y_scale is None else out * y_scale[1] + y_scale[0]
            y = data.y_metric
            ss_res = ((y - pred) ** 2).sum(dim=0)
            ss_tot = ((y - y.mean(dim=0)) ** 2).sum(dim=0).clamp(min=1e-12)
            stats["r2"] = (1 - ss_res / ss_tot).mean()
            stats["mae"] = (y - pred).abs().mean()
            stats["mse"] = ((y - pred) ** 2).mean()
            stats["rmse"] = stats["mse"].sqrt()
    keys = list(stats)
    values = torch.stack([stats[k].float() for k in keys]).tolist()  # one device→host copy
    return {f"{prefix}_{k}": float(v) for k, v in zip(keys, values, strict=True)}
