"""Datasets: builtins, csv/npz/parquet parsing and its refusals, targets, splits, scaling."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlp_engine.data import (
    LoadedData,
    Standardizer,
    builtin_info,
    describe,
    encode_targets,
    load_builtin,
    load_dataset,
    load_inline,
    read_table,
    split_indices,
)
from mlp_engine.errors import DataError
from mlp_engine.registry import BUILTIN_DATASETS
from mlp_engine.spec import DatasetSpec

# ---------------------------------------------------------------------------- builtins

SMALL = {"n_samples": 60}


def _params(name: str) -> dict | None:
    return dict(SMALL) if BUILTIN_DATASETS[name].params else None


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_builtin_matches_registry_and_info(name: str) -> None:
    entry = BUILTIN_DATASETS[name]
    data = load_builtin(name, _params(name), seed=3)
    info = builtin_info(name, _params(name))
    assert data.x.dtype == np.float32 and data.x.ndim == 2
    assert data.x.shape == (info.n_rows, entry.n_features)
    assert np.isfinite(data.x).all()
    assert data.y.shape == (info.n_rows,)
    assert len(data.feature_names) == entry.n_features
    described = describe(data)
    assert described.n_rows == info.n_rows and described.n_features == info.n_features
    assert described.default_task == entry.task == info.default_task
    if entry.n_classes is not None:
        assert data.y.dtype == np.int64
        assert described.class_labels == info.class_labels == tuple(range(entry.n_classes))
    else:
        assert info.n_classes is None and info.target_numeric


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_builtin_is_deterministic_per_seed(name: str) -> None:
    a = load_builtin(name, _params(name), seed=7)
    b = load_builtin(name, _params(name), seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    if BUILTIN_DATASETS[name].params:  # generated: another seed gives other data
        c = load_builtin(name, _params(name), seed=8)
        assert not np.array_equal(a.x, c.x)


def test_generator_params_are_used() -> None:
    data = load_builtin("spirals", {"n_samples": 50, "n_classes": 5, "turns": 2.0}, seed=0)
    assert data.x.shape == (50, 2)
    assert np.bincount(data.y).tolist() == [10] * 5
    assert builtin_info("spirals", {"n_classes": 5}).class_labels == (0, 1, 2, 3, 4)
    assert load_builtin("moons", {"n_samples": 123}).x.shape == (123, 2)


def test_xor_labels_are_the_xor_of_signs() -> None:
    data = load_builtin("xor", {"n_samples": 400, "noise": 0.05}, seed=1)
    expected = (data.x[:, 0] > 0) ^ (data.x[:, 1] > 0)
    np.testing.assert_array_equal(data.y, expected.astype(np.int64))
    assert np.bincount(data.y).tolist() == [200, 200]


def test_builtin_refuses_unknown_name_and_params() -> None:
    with pytest.raises(DataError, match="unknown builtin dataset 'nope'") as err:
        load_builtin("nope")
    assert err.value.field == "dataset.builtin"
    with pytest.raises(DataError, match=r"unknown parameter\(s\) \['n_samples'\]"):
        load_builtin("iris", {"n_samples": 10})
    with pytest.raises(DataError, match="n_samples must be >= 10") as err:
        builtin_info("moons", {"n_samples": 3})
    assert err.value.field == "dataset.params.n_samples"


def test_load_dataset_from_spec() -> None:
    iris = load_dataset(DatasetSpec(builtin="iris"))
    assert iris.x.shape == (150, 4)
    moons = load_dataset({"builtin": "moons", "params": {"n_samples": 20}}, seed=2)
    np.testing.assert_array_equal(moons.x, load_builtin("moons", {"n_samples": 20}, seed=2).x)
    inline = load_dataset({"inline": {"x": [[0.0, 1.0], [1.0, 0.0]], "y": ["a", "b"]}})
    assert inline.y.tolist() == ["a", "b"] and inline.y.dtype == object
    with pytest.raises(DataError, match="only the service or a worker") as err:
        load_dataset({"id": "ds_123"})
    assert err.value.field == "dataset.id"
    with pytest.raises(DataError):
        load_dataset({"builtin": "iris", "id": "x"})


def test_package_exports_resolve() -> None:
    import mlp_engine

    assert mlp_engine.load_dataset is load_dataset
    assert mlp_engine.read_table is read_table


def test_importing_data_does_not_import_torch() -> None:
    code = ("import sys, mlp_engine.data; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------- csv


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_string_class_labels(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,species\n1,2.5,setosa\n3,4,virginica\n5,6,setosa\n")
    data = read_table(path)
    assert data.feature_names == ["a", "b"] and data.target_names == ["species"]
    assert data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x, [[1, 2.5], [3, 4], [5, 6]])
    assert data.y.dtype == object and data.y.tolist() == ["setosa", "virginica", "setosa"]
    info = describe(data)
    assert info.class_labels == ("setosa", "virginica") and info.n_classes == 2
    assert not info.target_numeric and info.default_task == "classification"


def test_csv_target_by_name_from_file_object() -> None:
    raw = io.BytesIO(b"label,f1,f2\n0,1,2\n1,3,4\n")
    data = read_table(raw, format="csv", target="label")
    assert data.feature_names == ["f1", "f2"]
    assert data.y.dtype == np.int64 and data.y.tolist() == [0, 1]
    # the format comes from the file name given beside a file object
    assert read_table(io.BytesIO(b"a,b\n1,2\n"), filename="up.CSV").y.tolist() == [2]


def test_csv_several_targets_make_multilabel(tmp_path: Path) -> None:
    path = _csv(tmp_path, "f,l1,l2\n0.5,1,0\n1.5,0,1\n2.5,1,1\n")
    for target in (["l1", "l2"], "l1,l2"):
        data = read_table(path, target=target)
        assert data.y.shape == (3, 2) and data.target_names == ["l1", "l2"]
    info = describe(data)
    assert info.multilabel and info.n_outputs == 2 and info.default_task == "multilabel"


def test_csv_missing_target_column_lists_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"'label' is not in the file.*\['a', 'b', 'c'\]") as err:
        read_table(path, target="label")
    assert err.value.field == "target"


def test_csv_non_numeric_feature_is_named(tmp_path: Path) -> None:
    path = _csv(tmp_path, "age,city,y\n1,paris,0\n2,rome,1\n")
    with pytest.raises(DataError, match=r"feature column 'city' is not numeric.*row 1: 'paris'"):
        read_table(path)


def test_csv_formula_injection_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,y\n1,2,0\n3,=SUM(A1:A9),1\n")
    with pytest.raises(DataError, match=r"'b' is not numeric.*row 2: '=SUM\(A1:A9\)'"):
        read_table(path)


@pytest.mark.parametrize(("cell", "kind"), [("", "missing"), ("nan", "missing"),
                                            ("inf", "infinite"), ("-inf", "infinite")])
def test_csv_nan_and_inf_features_name_column_and_row(tmp_path: Path, cell: str,
                                                      kind: str) -> None:
    path = _csv(tmp_path, f"a,b,y\n1,2,0\n3,4,1\n5,{cell},0\n")
    with pytest.raises(DataError, match=rf"'b' has a {kind}.* at row 3"):
        read_table(path)


def test_csv_nan_in_numeric_target(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,y\n1,0.5\n2,\n")
    with pytest.raises(DataError, match=r"target column 'y' has a missing \(NaN\) value at row 2"):
        read_table(path)
    path = _csv(tmp_path, "a,y\n1,cat\n2,\n", name="s.csv")
    with pytest.raises(DataError, match=r"target column 'y' has a missing value at row 2"):
        read_table(path)


def test_csv_value_too_large_for_float32(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,y\n1e300,0\n1,1\n")
    with pytest.raises(DataError, match="too large for float32"):
        read_table(path)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("a,b,y\n", "no rows"),
    ("a,b\n1,2\n3,4,5\n", "cannot be parsed"),
    ("y\n1\n2\n", "no feature columns"),
])
def test_csv_empty_or_unparseable(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_table(_csv(tmp_path, text))


def test_csv_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"a,b\n\xff\xfe\x00\x81,1\n")
    with pytest.raises(DataError):
        read_table(path)


def test_format_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot tell the format") as err:
        read_table(_csv(tmp_path, "a,y\n1,2\n", name="data.txt"))
    assert err.value.field == "format"
    with pytest.raises(DataError, match="unknown format 'xlsx'"):
        read_table(_csv(tmp_path, "a,y\n1,2\n"), format="xlsx")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_table(io.BytesIO(b"a,y\n1,2\n"))


# ---------------------------------------------------------------------------- npz


def test_npz_good(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(path, x=x, y=np.array(["a", "b", "a", "c"]))
    data = read_table(path)
    np.testing.assert_array_equal(data.x, x.astype(np.float32))
    assert data.feature_names == ["x0", "x1", "x2"]
    assert data.y.dtype == object and data.y.tolist() == ["a", "b", "a", "c"]
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=np.ones((4, 2)))
    buf.seek(0)
    data = read_table(buf, format="npz")
    assert data.y.shape == (4, 2) and data.target_names == ["y0", "y1"]


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.npz"
    np.savez(path, x=np.zeros((2, 2)), y=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="object array"):
        read_table(path)


def test_npz_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, features=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match=r"no array 'x'.*\['features', 'y'\]"):
        read_table(path)


def test_npz_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((2000, 500)), y=np.zeros(2000))  # 8 MB of zeros
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match="over the limit of 1000000"):
        read_table(path, max_uncompressed_bytes=1_000_000)
    assert read_table(path).x.shape == (2000, 500)


def test_npz_lying_header_is_refused(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)})
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 64)
        buf = io.BytesIO()
        np.save(buf, np.zeros(3))
        zf.writestr("y.npy", buf.getvalue())
    with pytest.raises(DataError, match="corrupt"):
        read_table(path)


def test_npz_shapes_and_values_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="x has 3 rows"):
        read_table(path)
    np.savez(path, x=np.array([[1.0, np.nan]]), y=np.zeros(1))
    with pytest.raises(DataError, match="x in the npz file has a missing"):
        read_table(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid npz"):
        read_table(path)


# ---------------------------------------------------------------------------- parquet


def test_parquet_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"f1": [0.5, 1.5, 2.5], "f2": [1, 2, 3], "flag": [True, False, True],
                          "label": ["x", "y", "x"]})
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    data = read_table(path)
    assert data.feature_names == ["f1", "f2", "flag"] and data.target_names == ["label"]
    np.testing.assert_array_equal(data.x, frame[["f1", "f2", "flag"]].to_numpy(np.float32))
    assert data.y.tolist() == ["x", "y", "x"]
    with path.open("rb") as fh:
        assert read_table(fh, format="parquet", target="label").y.tolist() == ["x", "y", "x"]
    pd.DataFrame({"a": [1.0, 2.0], "l1": [0, 1], "l2": [1, 1]}).to_parquet(path)
    data = read_table(path, target=["l1", "l2"])
    assert data.y.tolist() == [[0, 1], [1, 1]] and describe(data).multilabel


def test_parquet_refusals(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"when": pd.to_datetime(["2020-01-01"]), "y": [1]}).to_parquet(path)
    with pytest.raises(DataError, match="'when' has type timestamp.*not numeric"):
        read_table(path)
    pd.DataFrame({"a": [1.0, None], "y": [1, 2]}).to_parquet(path)
    with pytest.raises(DataError, match="'a' has a missing"):
        read_table(path)
    pd.DataFrame({"a": np.zeros(1000), "y": np.zeros(1000)}).to_parquet(path)
    with pytest.raises(DataError, match="over the limit"):
        read_table(path, max_uncompressed_bytes=1000)
    path.write_bytes(b"PAR1 nonsense")
    with pytest.raises(DataError, match="parquet file cannot be read"):
        read_table(path)


# ---------------------------------------------------------------------------- inline, describe


def test_load_inline() -> None:
    data = load_inline([[1, 2], [3, 4]], [0, 1])
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert load_inline([[1], [2]], [[0, 1], [1, 1]]).y.shape == (2, 2)
    with pytest.raises(DataError, match="x has 2 rows"):
        load_inline([[1], [2]], [0])
    with pytest.raises(DataError) as err:
        load_inline([[1, 2], [3]], [0, 1])
    assert err.value.field == "dataset.inline"
    with pytest.raises(DataError, match="mixes"):
        load_inline([[1], [2]], ["a", 1])


def _data(y: object, n_features: int = 2) -> LoadedData:
    y = np.asarray(y)
    return LoadedData(x=np.zeros((len(y), n_features), np.float32), y=y,
                      feature_names=[f"x{i}" for i in range(n_features)], target_names=["y"])


def test_describe_classification() -> None:
    info = describe(_data([2, 0, 2, 1]))
    assert (info.n_rows, info.n_features, info.n_outputs) == (4, 2, 1)
    assert info.class_labels == (0, 1, 2) and info.n_classes == 3
    assert all(type(v) is int for v in info.class_labels)
    assert info.default_task == "classification" and not info.multilabel
    assert describe(_data([1.0, 0.0, 1.0])).class_labels == (0, 1)
    strings = describe(_data(np.array(["b", "a"], dtype=object)))
    assert strings.class_labels == ("a", "b") and not strings.target_numeric


def test_describe_regression() -> None:
    info = describe(_data([0.5, 1.25, 3.0]))
    assert info.default_task == "regression" and info.n_classes is None
    assert info.target_numeric
    many = describe(_data(np.arange(50)))  # integral but many values: regression by default
    assert many.default_task == "regression" and many.n_classes == 50
    assert describe(_data(np.arange(2000))).n_classes is None
    assert describe(_data([0, 1]), default_task="regression").default_task == "regression"
    multi = describe(_data([[0.5, 2.0], [1.0, 3.0]]))
    assert multi.n_outputs == 2 and not multi.multilabel and multi.default_task == "regression"


def test_describe_multilabel() -> None:
    info = describe(_data([[0, 1, 1], [1, 0, 0]]))
    assert info.multilabel and info.n_outputs == 3 and info.default_task == "multilabel"
    assert info.n_classes is None


# ---------------------------------------------------------------------------- encode_targets


def test_encode_classification() -> None:
    y = np.array(["dog", "cat", "dog"], dtype=object)
    codes = encode_targets(y, task="classification", class_labels=["cat", "dog"])
    assert codes.dtype == np.int64 and codes.tolist() == [1, 0, 1]
    assert encode_targets(np.array([5, 3, 5]), task="metric_learning",
                          class_labels=None).tolist() == [1, 0, 1]
    assert encode_targets(np.array([1.0, 2.0]), task="classification",
                          class_labels=[2, 1]).tolist() == [1, 0]
    with pytest.raises(DataError, match="label 'bird' is not one of the class labels"):
        encode_targets(np.array(["bird"], dtype=object), task="classification",
                       class_labels=["cat", "dog"])


def test_encode_regression_and_multilabel() -> None:
    reg = encode_targets(np.array([1.5, 2.5]), task="regression", class_labels=None)
    assert reg.dtype == np.float32 and reg.shape == (2, 1)
    assert encode_targets(np.ones((3, 2)), task="regression", class_labels=None).shape == (3, 2)
    ml = encode_targets(np.array([[0, 1], [1, 1]]), task="multilabel", class_labels=None)
    assert ml.dtype == np.float32 and ml.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(DataError, match="0/1"):
        encode_targets(np.array([[0, 2]]), task="multilabel", class_labels=None)
    with pytest.raises(DataError, match="numeric"):
        encode_targets(np.array(["a"], dtype=object), task="regression", class_labels=None)


# ---------------------------------------------------------------------------- split_indices


def test_split_sizes_and_determinism() -> None:
    train, val = split_indices(100, validation_split=0.2, seed=1)
    assert train.dtype == val.dtype == np.int64
    assert len(train) == 80 and len(val) == 20
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    again = split_indices(100, validation_split=0.2, seed=1)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, split_indices(100, validation_split=0.2, seed=2)[1])


def test_split_stratified_keeps_class_proportions() -> None:
    y = np.array([0] * 90 + [1] * 10)
    train, val = split_indices(100, validation_split=0.2, seed=0, stratify=y)
    assert np.bincount(y[val]).tolist() == [18, 2]
    assert np.bincount(y[train]).tolist() == [72, 8]
    labels = np.array(["a"] * 7 + ["b"] * 5 + ["c"] * 3, dtype=object)
    train, val = split_indices(15, validation_split=0.4, seed=0, stratify=labels)
    assert len(val) == 6 and set(labels[train]) == {"a", "b", "c"}
    assert sorted(labels[val].tolist()) == ["a", "a", "a", "b", "b", "c"]


def test_split_stratify_falls_back_with_singleton_class() -> None:
    y = np.array([0] * 9 + [1])
    train, val = split_indices(10, validation_split=0.3, seed=0, stratify=y)
    assert len(train) == 7 and len(val) == 3


def test_split_stratify_without_room_for_every_class_still_splits() -> None:
    y = np.array([0, 0, 1, 1])
    train, val = split_indices(4, validation_split=0.75, seed=0, stratify=y)
    assert len(train) == 1 and len(val) == 3


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.2), (2, 0.2), (3, 0.9), (50, 0.0)])
def test_tiny_data_skips_the_split(n: int, fraction: float) -> None:
    train, val = split_indices(n, validation_split=fraction, seed=0)
    assert train.tolist() == list(range(n)) and val.size == 0


def test_two_rows_split_one_each() -> None:
    train, val = split_indices(2, validation_split=0.5, seed=0)
    assert len(train) == len(val) == 1


# ---------------------------------------------------------------------------- Standardizer


def test_standardizer_uses_only_the_rows_it_is_given() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(200, 3)).astype(np.float32)
    x[150:] += 100.0  # the "validation" rows are far off
    train = np.arange(150)
    scaler = Standardizer.fit(x[train])
    np.testing.assert_allclose(scaler.mean, x[train].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(scaler.std, x[train].std(axis=0), rtol=1e-5)
    z = scaler.transform(x[train])
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)
    assert scaler.transform(x[150:]).mean() > 10  # not re-centred on the validation rows


def test_standardizer_constant_column_and_round_trip() -> None:
    x = np.array([[1.0, 0.1], [2.0, 0.1], [3.0, 0.1]], dtype=np.float32)
    scaler = Standardizer.fit(x)
    assert scaler.std[1] == 1.0 and scaler.transform(x)[:, 1].tolist() == [0.0, 0.0, 0.0]
    back = Standardizer.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(back.mean, scaler.mean)
    np.testing.assert_array_equal(back.std, scaler.std)
    assert back.mean.dtype == np.float32
    import json

    assert json.loads(json.dumps(scaler.to_dict())) == scaler.to_dict()
    with pytest.raises(DataError, match="expected rows of 2 features"):
        scaler.transform(np.zeros((1, 3)))
    with pytest.raises(DataError):
        Standardizer.from_dict({"mean": [0.0], "std": [0.0]})
