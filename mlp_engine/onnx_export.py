"""ONNX export of a trained model with its preprocessing folded in (SPEC section 12): the
graph takes raw feature rows and answers what `inference.predict` answers for them.

torch's own exporter (`torch.onnx.export`, the torch.export-based one that is its default)
writes the graph; it needs the `onnxscript` and `onnx` packages, which the `server` extra
brings. Nothing here imports them: torch does, when it exports.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsError
from .spec import JobSpec

__all__ = ["export_onnx", "ONNX_FORMAT", "ONNX_OPSET", "ONNX_INPUT", "ONNX_OUTPUTS"]

ONNX_FORMAT = "mlp_engine.onnx/1"
ONNX_OPSET = 20  # SPEC 12 asks for 17 or newer; 20 is torch's default
ONNX_INPUT = "x"
# task -> (the graph's one output, what it holds): as `inference.predict` answers them
ONNX_OUTPUTS: dict[str, tuple[str, str]] = {
    "classification": ("probabilities", "(batch, classes) probability of each class, in the "
                                        "order of the class_labels metadata"),
    "multilabel": ("probabilities", "(batch, labels) sigmoid probability of each label"),
    "regression": ("predictions", "values in the target's units: (batch,) for one target, "
                                  "(batch, targets) for several"),
    "metric_learning": ("embeddings", "(batch, d_out) the embedding of each row"),
}
_REQUIRED = ("onnxscript", "onnx")
# torch.export keeps global state while it traces: one export at a time in a process
_EXPORT_LOCK = threading.Lock()


class _Deployable(nn.Module):
    """The trained module between the preprocessing and the output transform that
    `inference.predict` applies, so that the exported graph repeats both."""

    x_mean: torch.Tensor  # (d_in,) buffers, registered when the preprocessing has them
    x_std: torch.Tensor
    y_mean: torch.Tensor  # (targets,)
    y_std: torch.Tensor

    def __init__(self, model: nn.Module, *, task: str, preprocessing: dict[str, Any],
                 nll: bool) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.nll = nll
        self.standardize = preprocessing.get("x_mean") is not None
        self.destandardize = task == "regression" and preprocessing.get("y_mean") is not None
        if self.standardize:
            self.register_buffer("x_mean", _vector(preprocessing["x_mean"]))
            self.register_buffer("x_std", _vector(preprocessing["x_std"]))
        if self.destandardize:
            self.register_buffer("y_mean", _vector(preprocessing["y_mean"]))
            self.register_buffer("y_std", _vector(preprocessing["y_std"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d_in) raw features
        if self.standardize:
            x = (x - self.x_mean) / self.x_std  # (B, d_in), as predict standardises
        out = self.model(x)  # (B, d_out)
        if self.task == "classification":
            return out.exp() if self.nll else torch.softmax(out, dim=1)  # (B, classes)
        if self.task == "multilabel":
            return torch.sigmoid(out)  # (B, labels)
        if self.task == "regression":
            if self.destandardize:
                out = out * self.y_std + self.y_mean  # (B, targets) in the target's units
            return out[:, 0] if out.shape[1] == 1 else out  # (B,) for one target
        return out  # (B, d_out) embeddings


def _vector(values: Any) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).reshape(-1)  # (d,)


def _unwrap(model: Any) -> tuple[nn.Module, JobSpec, dict[str, Any]]:
    """The module, its spec and its preprocessing, from `load_model`'s module or a
    FitResult."""
    if hasattr(model, "history") and hasattr(model, "model"):  # a FitResult
        return model.model, model.spec, dict(model.preprocessing or {})
    spec = getattr(model, "spec", None)
    if not isinstance(spec, JobSpec):
        raise WeightsError("export_onnx needs a module from load_model (with .spec and "
                           ".preprocessing) or a FitResult")
    return model, spec, dict(getattr(model, "preprocessing", None) or {})


def _metadata(*, task: str, output: str, spec: JobSpec,
              preprocessing: dict[str, Any]) -> dict[str, str]:
    """The model's metadata_props (strings; JSON where structured)."""
    labels = preprocessing.get("class_labels")
    if task == "classification" and not labels:
        labels = list(range(spec.model.output_dim or 0))
    return {
        "format": ONNX_FORMAT,
        "task": task,
        "input": f"{ONNX_INPUT}: float32 (batch, {spec.model.input_dim}) raw features in the "
                 "order of feature_names; the standardisation is in the graph",
        "output": f"{output}: {ONNX_OUTPUTS[task][1]}",
        "class_labels": json.dumps(labels if task == "classification" else None),
        "feature_names": json.dumps(preprocessing.get("feature_names")),
        "preprocessing": json.dumps(preprocessing),
    }


def export_onnx(model: Any, path: str | os.PathLike[str], *,
                opset_version: int = ONNX_OPSET) -> Path:
    """Write `model` (a module from `load_model`, or a FitResult) as an ONNX model that takes
    raw features (input `x`, float32, any number of rows) and answers what
    `inference.predict` answers: probabilities per class (classification, in the order of
    `class_labels`), sigmoid probabilities (multilabel), values in the target's units
    (regression) or embeddings (metric learning); see ONNX_OUTPUTS.

    The standardisation (x_mean, x_std) is the graph's first ops and the target's
    (y_std, y_mean) its last; the model is exported in eval mode (batch norm uses its
    running statistics, dropout is gone). The task, class labels, feature names and the
    preprocessing are in the model's metadata_props. Written to a temporary name and renamed.
    """
    if opset_version < 17:
        raise ValueError(f"opset_version must be 17 or newer, not {opset_version}")
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise WeightsError(f"ONNX export needs the packages {', '.join(missing)} (pip install "
                           "'mlp-training-service[server]', or pip install onnxscript onnx)")
    module, spec, preprocessing = _unwrap(model)
    task = preprocessing.get("task") or spec.task
    if task not in ONNX_OUTPUTS:
        raise WeightsError(f"cannot export a model of task {task!r} to ONNX")
    input_dim = spec.model.input_dim
    if input_dim is None:
        raise WeightsError("the model's spec has no model.input_dim")
    output = ONNX_OUTPUTS[task][0]
    # a copy on the CPU in eval mode: the caller's module keeps its device and mode
    module = copy.deepcopy(module).cpu().eval()
    wrapped = _Deployable(module, task=task, preprocessing=preprocessing,
                          nll=spec.loss is not None and spec.loss.name == "nll").eval()
    # two example rows: torch.export would specialise a batch of one to the constant 1
    example = torch.zeros(2, input_dim)
    batch = torch.export.Dim("batch")
    with _EXPORT_LOCK:
        try:
            program = torch.onnx.export(
                wrapped, (example,), input_names=[ONNX_INPUT], output_names=[output],
                dynamic_shapes={"x": {0: batch}}, opset_version=opset_version, dynamo=True,
                verbose=False)
        except Exception as exc:  # torch.export and onnxscript raise many kinds
            raise WeightsError(f"the model cannot be exported to ONNX: {exc}") from exc
    assert program is not None  # the dynamo exporter always returns its program
    program.model.metadata_props.update(
        _metadata(task=task, output=output, spec=spec, preprocessing=preprocessing))
    program.model.doc_string = (f"mlp_engine {task} model with its preprocessing folded in: "
                                f"raw features in, {output} out")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
