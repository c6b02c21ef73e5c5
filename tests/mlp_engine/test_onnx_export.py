"""ONNX export (SPEC 12): raw features in, what `inference.predict` answers out, checked
under onnxruntime on every task, with batch norm and dropout, for every activation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlp_engine.errors import WeightsError
from mlp_engine.inference import predict
from mlp_engine.onnx_export import ONNX_FORMAT, ONNX_OUTPUTS, export_onnx
from mlp_engine.registry import ACTIVATIONS
from mlp_engine.training import FitResult, fit
from mlp_engine.weights import load_model, save_model

TOLERANCE = 1e-5  # SPEC 12: the ONNX model's outputs equal the predict route's within this
_MEM = {"dataset": {"id": "in-memory"}}
_BN_DROPOUT = {"batch_norm": True, "dropout": 0.3}


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _train_all() -> dict[str, FitResult]:
    x = _rng(0).normal(loc=5.0, scale=3.0, size=(120, 3))  # far from standardised
    names = np.array(["setosa", "versicolor", "virginica"])
    y = names[(x[:, 0] > 5).astype(int) + (x[:, 1] > 6).astype(int)]
    xr = _rng(1).normal(size=(120, 4)) * 10 + 3
    yr = np.stack([xr[:, 0] * 50 + 200, xr[:, 1] * 3 - 7], axis=1)  # two targets, far scales
    xm = _rng(2).normal(size=(120, 5)).astype(np.float32)
    ym = (xm[:, :3] > 0).astype(np.float32)
    xe = _rng(3).normal(size=(80, 4))
    ye = (xe[:, 0] > 0).astype(int)
    return {
        "classification": fit({**_MEM, "model": {"hidden_dims": [16, 8], **_BN_DROPOUT,
                                                 "activation": "gelu"},
                               "training": {"epochs": 3}}, x, y),
        "nll": fit({**_MEM, "loss": "nll", "model": {"hidden_dims": [8]},
                    "training": {"epochs": 2}}, x, y),
        "regression": fit({**_MEM, "model": {"hidden_dims": [8], **_BN_DROPOUT},
                           "training": {"epochs": 3}}, xr, yr[:, 0]),
        "regression2": fit({**_MEM, "model": {"hidden_dims": [8, 8], **_BN_DROPOUT},
                            "training": {"epochs": 3}}, xr, yr),
        "regression_raw": fit({**_MEM, "model": {"hidden_dims": [8]},
                               "training": {"epochs": 2, "standardize": False}}, xr, yr),
        "multilabel": fit({**_MEM, "model": {"hidden_dims": [8], **_BN_DROPOUT},
                           "training": {"epochs": 3}}, xm, ym),
        "metric_learning": fit({**_MEM, "task": "metric_learning", "loss": "hinge_embedding",
                                "model": {"hidden_dims": [8], **_BN_DROPOUT},
                                "training": {"epochs": 2}}, xe, ye),
    }


@pytest.fixture(scope="module")
def trained() -> Iterator[dict[str, FitResult]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _train_all()
    finally:
        torch.set_num_threads(before)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_vs_predict(result: FitResult, tmp_path: Path, rows: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, ort.InferenceSession]:
    """(ONNX output, predict's output) for `rows` raw rows, both from the weights file."""
    loaded = load_model(save_model(tmp_path / "m.safetensors", result))
    path = export_onnx(loaded, tmp_path / "m.onnx")
    d_in = result.spec.model.input_dim or 0
    x = (_rng(seed).normal(size=(rows, d_in)) * 4 + 2).astype(np.float32)
    session = _session(path)
    (out,) = session.run(None, {"x": x})
    answer = predict(loaded, x)
    task = result.preprocessing["task"]
    key = "probabilities" if task in ("classification", "multilabel") else "predictions"
    return out, np.asarray(answer[key], dtype=np.float32), session


@pytest.mark.parametrize("kind", ["classification", "nll", "regression", "regression2",
                                  "regression_raw", "multilabel", "metric_learning"])
@pytest.mark.parametrize("rows", [1, 37])
def test_outputs_equal_predict(trained: dict[str, FitResult], kind: str, rows: int,
                               tmp_path: Path) -> None:
    got, want, session = _onnx_vs_predict(trained[kind], tmp_path, rows, seed=rows)
    assert got.shape == want.shape
    assert got.dtype == np.float32
    if kind.startswith("regression"):  # in the target's units (hundreds): float32's own step
        scale = np.maximum(1.0, np.abs(want))
        assert np.max(np.abs(got - want) / scale) <= TOLERANCE
    else:
        assert np.max(np.abs(got - want)) <= TOLERANCE
    task = trained[kind].preprocessing["task"]
    assert [o.name for o in session.get_outputs()] == [ONNX_OUTPUTS[task][0]]


def test_graph_metadata_and_dynamic_batch(trained: dict[str, FitResult],
                                          tmp_path: Path) -> None:
    result = trained["classification"]
    path = export_onnx(load_model(save_model(tmp_path / "m.safetensors", result)),
                       tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    assert inp.name == "x" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # any number of rows
    assert dims[1].dim_value == 3
    # the standardisation comes first: raw features in
    assert [n.op_type for n in model.graph.node[:2]] == ["Sub", "Div"]
    assert model.graph.node[-1].op_type == "Softmax"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == ONNX_FORMAT and meta["task"] == "classification"
    assert json.loads(meta["class_labels"]) == ["setosa", "versicolor", "virginica"]
    pre = json.loads(meta["preprocessing"])
    assert pre["x_mean"] == result.preprocessing["x_mean"]
    assert pre["x_std"] == result.preprocessing["x_std"]
    assert "probabilities" in meta["output"]
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, renamed
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.data"))


def test_the_export_is_deterministic_and_leaves_the_model_alone(
        trained: dict[str, FitResult], tmp_path: Path) -> None:
    result = trained["multilabel"]
    result.model.train()
    try:
        a = export_onnx(result, tmp_path / "a.onnx")
        b = export_onnx(result, tmp_path / "b.onnx")
        assert result.model.training  # exported from a copy, in eval mode
    finally:
        result.model.eval()
    # the service relies on it: two API processes exporting at once write the same bytes
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_exports(activation: str, tmp_path: Path) -> None:
    x = _rng(5).normal(size=(40, 3)) * 2
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    result = fit({**_MEM, "model": {"hidden_dims": [6], "activation": activation,
                                    "batch_norm": True},
                  "training": {"epochs": 1}}, x, y)
    got, want, _ = _onnx_vs_predict(result, tmp_path, rows=11, seed=6)
    assert np.max(np.abs(got - want)) <= TOLERANCE


def test_refusals(trained: dict[str, FitResult], tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="load_model"):
        export_onnx(torch.nn.Linear(3, 2), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="17 or newer"):
        export_onnx(trained["nll"], tmp_path / "m.onnx", opset_version=13)


def test_missing_exporter_packages_are_named(trained: dict[str, FitResult], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_onnxscript(name: str, *args: Any) -> Any:
        return None if name == "onnxscript" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_onnxscript)
    with pytest.raises(WeightsError, match="onnxscript"):
        export_onnx(trained["nll"], tmp_path / "m.onnx")
