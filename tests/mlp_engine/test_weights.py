"""Weights files (SPEC §4) and predictions from them (inference.predict)."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mlp_engine.errors import DataError, WeightsError
from mlp_engine.inference import predict
from mlp_engine.model import build_model
from mlp_engine.training import FitResult, fit
from mlp_engine.weights import (
    WEIGHTS_FORMAT,
    export_state_dict,
    load_model,
    read_metadata,
    save_model,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _classification_xy() -> tuple[np.ndarray, np.ndarray]:
    x = _rng().normal(loc=5.0, scale=3.0, size=(200, 3))  # far from standardised
    names = np.array(["setosa", "versicolor", "virginica"])
    return x, names[(x[:, 0] > 5).astype(int) + (x[:, 1] > 6).astype(int)]


@pytest.fixture(scope="module")
def trained() -> Iterator[dict[str, FitResult]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _train_all()
    finally:
        torch.set_num_threads(before)


def _train_all() -> dict[str, FitResult]:
    x, y = _classification_xy()
    mem = {"dataset": {"id": "in-memory"}}
    xr = _rng(1).normal(size=(150, 4))
    yr = np.stack([xr[:, 0] * 50 + 200, xr[:, 1] * 3 - 7], axis=1)
    xm = _rng(2).normal(size=(150, 5)).astype(np.float32)
    ym = (xm[:, :3] > 0).astype(np.float32)
    return {
        "classification": fit({**mem, "model": {"hidden_dims": [16, 8], "batch_norm": True,
                                                "dropout": 0.2},
                               "training": {"epochs": 4}}, x, y),
        "nll": fit({**mem, "loss": "nll", "model": {"hidden_dims": [8]},
                    "training": {"epochs": 2}}, x, y),
        "regression": fit({"dataset": {"builtin": "diabetes"}, "model": {"hidden_dims": [8]},
                           "training": {"epochs": 3}}),
        "regression2": fit({**mem, "training": {"epochs": 3}}, xr, yr),
        "multilabel": fit({**mem, "model": {"hidden_dims": [8]}, "training": {"epochs": 3}},
                          xm, ym),
        "metric_learning": fit({"dataset": {"builtin": "moons", "params": {"n_samples": 100}},
                                "loss": "hinge_embedding", "training": {"epochs": 2}}),
    }


def _header(path: Path) -> dict[str, Any]:
    """The safetensors header, read by hand: 8 bytes little-endian length, then JSON."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


@pytest.mark.parametrize("kind", ["classification", "nll", "regression", "regression2",
                                  "multilabel", "metric_learning"])
def test_save_load_round_trip(trained: dict[str, FitResult], kind: str, tmp_path: Path) -> None:
    result = trained[kind]
    path = save_model(tmp_path / "m.safetensors", result)
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.spec == result.spec  # type: ignore[attr-defined]
    assert loaded.preprocessing == result.preprocessing  # type: ignore[attr-defined]
    sd, ld = result.model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
    x = torch.randn(17, result.spec.model.input_dim or 0)
    with torch.no_grad():
        assert torch.equal(result.model(x), loaded(x))
    raw = np.random.default_rng(3).normal(size=(9, result.spec.model.input_dim or 0))
    assert predict(loaded, raw) == predict(result.model, raw)


def test_metadata_is_json_in_the_safetensors_header(trained: dict[str, FitResult],
                                                    tmp_path: Path) -> None:
    result = trained["classification"]
    path = save_model(tmp_path / "m.safetensors", result)
    meta = _header(path)["__metadata__"]
    assert meta["format"] == WEIGHTS_FORMAT
    assert json.loads(meta["spec"]) == result.spec.model_dump(mode="json")
    pre = json.loads(meta["preprocessing"])
    assert pre["class_labels"] == ["setosa", "versicolor", "virginica"]
    assert len(pre["x_mean"]) == len(pre["x_std"]) == 3
    assert read_metadata(path) == (result.spec, result.preprocessing)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away


def test_loading_never_unpickles(trained: dict[str, FitResult], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_model(tmp_path / "m.safetensors", trained["classification"])

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("unpickling while loading a weights file")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    loaded = load_model(path)
    assert predict(loaded, [[5.0, 5.0, 5.0]])["predictions"][0] in (
        "setosa", "versicolor", "virginica")


def test_save_a_bare_module(trained: dict[str, FitResult], tmp_path: Path) -> None:
    result = trained["nll"]
    with pytest.raises(WeightsError, match="needs the resolved spec"):
        save_model(tmp_path / "m.safetensors", build_model(result.spec))
    path = save_model(tmp_path / "m.safetensors", result.model, spec=result.spec,
                      preprocessing=result.preprocessing)
    loaded = load_model(path)
    assert loaded.preprocessing == result.preprocessing  # type: ignore[attr-defined]


def test_export_state_dict_loads_weights_only(trained: dict[str, FitResult],
                                              tmp_path: Path) -> None:
    result = trained["classification"]
    path = export_state_dict(tmp_path / "m.pt", result)
    state = torch.load(path, weights_only=True)
    expected = result.model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    fresh = build_model(result.spec)
    fresh.load_state_dict(state)
    fresh.eval()
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))


def _write_with_metadata(path: Path, result: FitResult, metadata: dict[str, str]) -> Path:
    tensors = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_corrupted_files_are_weights_errors(trained: dict[str, FitResult],
                                           tmp_path: Path) -> None:
    result = trained["classification"]
    good = save_model(tmp_path / "good.safetensors", result)
    raw = good.read_bytes()
    meta = _header(good)["__metadata__"]
    cases: dict[str, Path] = {}
    for name, data in {"truncated": raw[: len(raw) // 2], "garbage": b"not a weights file" * 9,
                       "empty": b"", "header_only": raw[:8],
                       "pickle": pickle.dumps({"spec": 1})}.items():
        cases[name] = tmp_path / f"{name}.safetensors"
        cases[name].write_bytes(data)
    cases["missing"] = tmp_path / "missing.safetensors"
    cases["no_spec"] = _write_with_metadata(tmp_path / "no_spec.st", result, {"format": "x"})
    cases["bad_spec_json"] = _write_with_metadata(
        tmp_path / "bad_spec.st", result, {**meta, "spec": "{not json"})
    cases["invalid_spec"] = _write_with_metadata(
        tmp_path / "invalid_spec.st", result, {**meta, "spec": '{"dataset": {}, "x": 1}'})
    cases["bad_preprocessing"] = _write_with_metadata(
        tmp_path / "bad_pre.st", result, {**meta, "preprocessing": "[1, "})
    unsized = json.loads(meta["spec"])
    unsized["model"]["input_dim"] = None
    cases["unsized_spec"] = _write_with_metadata(
        tmp_path / "unsized.st", result, {**meta, "spec": json.dumps(unsized)})
    other = json.loads(meta["spec"])
    other["model"]["hidden_dims"] = [16, 9]
    cases["mismatched_spec"] = _write_with_metadata(
        tmp_path / "mismatch.st", result, {**meta, "spec": json.dumps(other)})
    not_refused = []
    for name, path in cases.items():
        try:
            load_model(path)
        except WeightsError as exc:
            assert str(exc)
        except Exception as exc:  # noqa: BLE001 - which case raised what is the point
            not_refused.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            not_refused.append(f"{name}: loaded")
    assert not_refused == []


# --------------------------------------------------------------------------- predict


def test_predict_classification_by_hand(trained: dict[str, FitResult], tmp_path: Path) -> None:
    result = trained["classification"]
    model = load_model(save_model(tmp_path / "m.safetensors", result))
    pre = result.preprocessing
    x, y = _classification_xy()
    out = predict(model, x)
    xs = (x.astype(np.float32) - np.array(pre["x_mean"], np.float32)) / np.array(
        pre["x_std"], np.float32)
    # the standardiser was fitted on the training rows: mean ≈ 5, std ≈ 3, not 0 and 1
    assert np.allclose(pre["x_mean"], 5.0, atol=0.6) and np.allclose(pre["x_std"], 3.0, atol=0.5)
    with torch.no_grad():
        probs = torch.softmax(result.model(torch.as_tensor(xs)), dim=1).numpy()
    labels = ["setosa", "versicolor", "virginica"]
    assert out["predictions"] == [labels[i] for i in probs.argmax(axis=1)]
    assert np.allclose(out["probabilities"], probs, atol=1e-6)
    # one row as a flat list is one prediction
    single = predict(model, list(x[0]))
    assert single["predictions"] == out["predictions"][:1]


def test_predict_nll_probabilities(trained: dict[str, FitResult]) -> None:
    result = trained["nll"]
    x, _ = _classification_xy()
    out = predict(result.model, x[:20])
    assert np.allclose(np.sum(out["probabilities"], axis=1), 1.0, atol=1e-5)


def test_predict_regression_unstandardises(trained: dict[str, FitResult]) -> None:
    for kind in ("regression", "regression2"):
        result = trained[kind]
        pre = result.preprocessing
        assert pre["y_mean"] is not None
        d = result.spec.model.input_dim or 0
        x = np.random.default_rng(4).normal(size=(6, d)).astype(np.float32)
        xs = (x - np.array(pre["x_mean"], np.float32)) / np.array(pre["x_std"], np.float32)
        with torch.no_grad():
            raw = result.model(torch.as_tensor(xs)).numpy()
        expected = raw * np.array(pre["y_std"]) + np.array(pre["y_mean"])
        out = predict(result.model, x)
        assert out["probabilities"] is None
        got = np.array(out["predictions"])
        if kind == "regression":
            assert got.shape == (6,)  # one target: one number per row
            expected = expected[:, 0]
        else:
            assert got.shape == (6, 2)
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-4)
    # in the target's units: diabetes progression is around 150, not around 0
    assert 50 < np.mean(predict(trained["regression"].model, np.zeros((1, 10)))[
        "predictions"]) < 300


def test_predict_multilabel_and_embeddings(trained: dict[str, FitResult]) -> None:
    ml = trained["multilabel"]
    x = np.random.default_rng(5).normal(size=(4, 5))
    out = predict(ml.model, x)
    probs = np.array(out["probabilities"])
    assert probs.shape == (4, 3)
    assert out["predictions"] == (probs > 0.5).astype(int).tolist()
    emb = predict(trained["metric_learning"].model, np.zeros((3, 2)))
    assert np.array(emb["predictions"]).shape == (3, 8) and emb["probabilities"] is None


@pytest.mark.parametrize("x", [np.zeros((2, 4)), np.zeros((2, 2)), np.zeros(5),
                               np.zeros((2, 3, 1))])
def test_predict_refuses_the_wrong_feature_count(trained: dict[str, FitResult],
                                                 x: np.ndarray) -> None:
    with pytest.raises(DataError) as info:
        predict(trained["classification"].model, x)
    assert info.value.field == "x" and "3 features" in str(info.value)


def test_predict_refuses_nan(trained: dict[str, FitResult]) -> None:
    with pytest.raises(DataError, match="NaN"):
        predict(trained["classification"].model, [[1.0, float("nan"), 2.0]])
