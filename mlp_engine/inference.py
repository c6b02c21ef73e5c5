"""Predictions from a loaded model, repeating the preprocessing saved with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import DataError
from .spec import JobSpec

__all__ = ["predict"]


@torch.no_grad()
def predict(model: torch.nn.Module, x: Any, *, top_k: int | None = None) -> dict[str, Any]:
    """`{"predictions": [...], "probabilities": [[...]] | None}` for raw feature rows.

    classification: predictions in the original class labels, probabilities per class
    (with `top_k`: only the k most probable, most probable first, and their labels in
    `classes`); multilabel: 0/1 per label and sigmoid probabilities; regression: numbers in
    the target's units (a list per row for several targets); metric_learning: embeddings.
    """
    pre: dict[str, Any] = getattr(model, "preprocessing", {}) or {}
    spec: JobSpec = model.spec  # type: ignore[assignment]
    xa: np.ndarray = np.asarray(x, dtype=np.float32)
    if xa.ndim == 1:
        xa = xa[None, :]
    if xa.ndim != 2 or xa.shape[1] != spec.model.input_dim:
        raise DataError(f"x must be rows of {spec.model.input_dim} features; got shape "
                        f"{list(xa.shape)}", field="x")
    if not np.isfinite(xa).all():
        raise DataError("x holds NaN or infinite values", field="x")
    if pre.get("x_mean") is not None:
        xa = (xa - np.asarray(pre["x_mean"], np.float32)) / np.asarray(pre["x_std"], np.float32)
    device = next(model.parameters()).device
    out = model(torch.as_tensor(xa, device=device)).float().cpu()  # (N, d_out)
    task = pre.get("task") or spec.task
    if task == "classification":
        nll = spec.loss is not None and spec.loss.name == "nll"
        probs = out.exp() if nll else torch.softmax(out, dim=1)
        idx = probs.argmax(dim=1).tolist()
        labels = pre.get("class_labels") or list(range(out.shape[1]))
        predictions = [labels[i] for i in idx]
        if top_k is None:
            return {"predictions": predictions, "probabilities": probs.tolist()}
        best = torch.topk(probs, k=min(top_k, probs.shape[1]), dim=1)  # (N, k)
        return {"predictions": predictions, "probabilities": best.values.tolist(),
                "classes": [[labels[i] for i in row] for row in best.indices.tolist()]}
    if task == "multilabel":
        return {"predictions": (out > 0).int().tolist(),
                "probabilities": torch.sigmoid(out).tolist()}
    if task == "regression":
        if pre.get("y_mean") is not None:
            out = out * torch.tensor(pre["y_std"]) + torch.tensor(pre["y_mean"])
        values = out.tolist()
        return {"predictions": [v[0] for v in values] if out.shape[1] == 1 else values,
                "probabilities": None}
    return {"predictions": out.tolist(), "probabilities": None}
