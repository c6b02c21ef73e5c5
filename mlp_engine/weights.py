"""Weights files: safetensors with the resolved spec and preprocessing in the metadata.

Loading never unpickles: safetensors for the weights, JSON for the metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import SpecError, WeightsError
from .model import MLP, build_model
from .spec import JobSpec, stored_spec

__all__ = ["save_model", "load_model", "export_state_dict", "read_metadata", "WEIGHTS_FORMAT"]

WEIGHTS_FORMAT = "mlp_engine.weights/1"


def save_model(path: str | os.PathLike[str], model: Any, *, spec: JobSpec | None = None,
               preprocessing: dict[str, Any] | None = None) -> Path:
    """Write `model` (an MLP, or a FitResult) as safetensors with its spec and preprocessing.

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    if hasattr(model, "history") and hasattr(model, "model"):  # a FitResult
        spec = spec or model.spec
        preprocessing = preprocessing if preprocessing is not None else model.preprocessing
        model = model.model
    if spec is None:
        raise WeightsError("save_model needs the resolved spec")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "spec": spec.model_dump_json(),
                "preprocessing": json.dumps(preprocessing or {})}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike[str]) -> tuple[JobSpec, dict[str, Any]]:
    """The spec and preprocessing stored in a weights file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"not a safetensors weights file: {exc}") from exc
    if "spec" not in meta:
        raise WeightsError("the weights file has no 'spec' in its metadata")
    try:
        spec = stored_spec(meta["spec"])  # no dataset when trained from arrays
        preprocessing = json.loads(meta.get("preprocessing", "{}"))
    except ValueError as exc:  # pydantic's ValidationError and JSONDecodeError are ValueErrors
        raise WeightsError(f"the weights file's metadata is not valid: {exc}") from exc
    if not isinstance(preprocessing, dict):
        raise WeightsError("the weights file's 'preprocessing' metadata is not an object")
    return spec, preprocessing


def load_model(path: str | os.PathLike[str], *, device: str = "cpu") -> MLP:
    """Rebuild the module from a weights file alone; returned in eval mode with `.spec`
    and `.preprocessing` attributes."""
    spec, preprocessing = read_metadata(path)
    try:
        model = build_model(spec)
    except SpecError as exc:  # a spec without sizes: not one save_model wrote
        raise WeightsError(f"the weights file's spec cannot be built: {exc}") from exc
    state = {}
    with safe_open(str(path), framework="pt", device=device) as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            state[key] = f.get_tensor(key)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"weights do not match the spec: {exc}") from exc
    model.to(device).eval()
    model.spec = spec  # type: ignore[assignment]
    model.preprocessing = preprocessing  # type: ignore[assignment]
    return model


def export_state_dict(path: str | os.PathLike[str], model: Any) -> Path:
    """Write a plain torch state_dict (`torch.load(path, weights_only=True)` reads it)."""
    if hasattr(model, "history") and hasattr(model, "model"):
        model = model.model
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return path
