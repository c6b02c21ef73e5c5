"""Datasets as NumPy arrays: the builtins, uploaded tables (csv, npz, parquet) and inline data.

Also what training needs before torch sees the data: a description for spec resolution,
target encoding, a seeded train/validation split and standardisation. Imports no torch
(the API process parses uploads with it) and never unpickles anything.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from .errors import DataError
from .registry import BUILTIN_DATASETS, checked_params
from .spec import DatasetInfo, DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LoadedData",
    "Standardizer",
    "FORMATS",
    "MAX_CLASSES",
    "MAX_LABEL_CHARS",
    "infer_task",
    "load_builtin",
    "builtin_info",
    "read_table",
    "load_inline",
    "load_dataset",
    "seeded_rows",
    "describe",
    "encode_targets",
    "split_indices",
]

log = logging.getLogger(__name__)

FORMATS = ("csv", "npz", "parquet")
_SUFFIXES = {".csv": "csv", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
# A single target column with more distinct integral values than this is not read as
# classes; with at most _MAX_DEFAULT_CLASSES it is classification unless the task says not.
MAX_CLASSES = 1000
MAX_LABEL_CHARS = 256  # of one class label given as a string
_MAX_DEFAULT_CLASSES = 20
# Row counts of the fixed scikit-learn datasets, so builtin_info need not load them.
_FIXED_ROWS = {"iris": 150, "digits": 1797, "wine": 178, "breast_cancer": 569, "diabetes": 442}
_NPY_MAX_HEADER = 10_000  # numpy's own default


@dataclass
class LoadedData:
    """Features and raw targets of one dataset.

    `y` is (n,) numbers, (n,) strings as an object array, or (n, k) numbers for
    multilabel and multi-output regression.
    """

    x: np.ndarray  # (n, d) float32, finite
    y: np.ndarray
    feature_names: list[str]
    target_names: list[str]


# ---------------------------------------------------------------------------- builtins


def _builtin_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The generator parameters of builtin `name`, checked, defaults filled in."""
    entry = BUILTIN_DATASETS.get(name)
    if entry is None:
        raise DataError(f"unknown builtin dataset '{name}'; choose one of "
                        f"{sorted(BUILTIN_DATASETS)}", field="dataset.builtin")
    try:
        return checked_params(entry.params, dict(params or {}), what=f"dataset '{name}'")
    except ValueError as exc:  # Param.check's messages start with the parameter's name
        bad = next((p.name for p in entry.params if str(exc).startswith(f"{p.name} ")), None)
        raise DataError(str(exc), field=f"dataset.params.{bad}" if bad else "dataset.params"
                        ) from exc


def builtin_info(name: str, params: dict | None = None) -> DatasetInfo:
    """Describe builtin `name` from the registry table, without loading or generating it."""
    entry = BUILTIN_DATASETS.get(name)
    checked = _builtin_params(name, params)
    assert entry is not None  # _builtin_params raised otherwise
    n_rows = _FIXED_ROWS.get(name, checked.get("n_samples", 0))
    n_classes = checked.get("n_classes", entry.n_classes)
    if n_classes is None:
        return DatasetInfo(n_rows=n_rows, n_features=entry.n_features, n_outputs=1,
                           target_numeric=True, default_task=entry.task)
    return DatasetInfo(n_rows=n_rows, n_features=entry.n_features, n_outputs=1,
                       n_classes=n_classes, class_labels=tuple(range(n_classes)),
                       target_numeric=True, default_task=entry.task)


def load_builtin(name: str, params: dict | None = None, *, seed: int = 0) -> LoadedData:
    """Load a scikit-learn dataset or generate a synthetic one (the same seed, the same data)."""
    checked = _builtin_params(name, params)
    if name in _FIXED_ROWS:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        y = np.asarray(bunch.target)
        y = y.astype(np.float64) if name == "diabetes" else y.astype(np.int64)
        return LoadedData(x=np.ascontiguousarray(bunch.data, dtype=np.float32), y=y,
                          feature_names=[str(f) for f in bunch.feature_names],
                          target_names=["target"])
    n, noise = checked["n_samples"], checked["noise"]
    if name in ("moons", "circles"):
        from sklearn import datasets

        # sklearn's generators take a legacy RandomState; an int seed makes them deterministic.
        if name == "moons":
            x, y = datasets.make_moons(n_samples=n, noise=noise, random_state=seed)
        else:
            x, y = datasets.make_circles(n_samples=n, noise=noise, factor=checked["factor"],
                                         random_state=seed)
    else:
        rng = np.random.default_rng(seed)
        if name == "xor":
            x, y = _xor(rng, n, noise)
        elif name == "spirals":
            x, y = _spirals(rng, n, noise, n_classes=checked["n_classes"],
                            turns=checked["turns"])
        else:  # a registry entry this module does not know how to make
            raise DataError(f"builtin dataset '{name}' has no generator", field="dataset.builtin")
    return LoadedData(x=np.ascontiguousarray(x, dtype=np.float32), y=np.asarray(y, np.int64),
                      feature_names=["x0", "x1"], target_names=["label"])


def _balanced_groups(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n group ids in [0, k), as equal in size as n allows, in random order."""
    return rng.permutation(np.arange(n) % k)


def _xor(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    blob = _balanced_groups(rng, n, 4)
    x = corners[blob] + rng.normal(0.0, noise, size=(n, 2))  # (n, 2)
    y = (corners[blob, 0] > 0) ^ (corners[blob, 1] > 0)  # 1 where the signs differ
    return x, y.astype(np.int64)


def _spirals(rng: np.random.Generator, n: int, noise: float, *, n_classes: int,
             turns: float) -> tuple[np.ndarray, np.ndarray]:
    y = _balanced_groups(rng, n, n_classes)
    t = rng.uniform(0.0, 1.0, size=n)
    radius = 0.05 + 0.95 * t  # start off the origin, where every arm would meet
    angle = 2.0 * math.pi * (turns * t + y / n_classes)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)  # (n, 2)
    x += rng.normal(0.0, noise, size=(n, 2))
    return x, y.astype(np.int64)


# ---------------------------------------------------------------------------- tables


def read_table(source: str | os.PathLike | BinaryIO, *, format: str | None = None,
               target: str | list[str] | None = None, filename: str | None = None,
               max_uncompressed_bytes: int = 2**30) -> LoadedData:
    """Read a csv, npz or parquet file (a path or a binary file object) into arrays.

    For csv and parquet `target` names the target column(s), by default the last column;
    every other column is a numeric feature. An npz file holds arrays `x` and `y`.
    Raises DataError saying what is wrong with the file.
    """
    fmt = _format_of(source, format, filename)
    if fmt == "npz":
        return _read_npz(source, max_uncompressed_bytes=max_uncompressed_bytes)
    if fmt == "csv":
        frame = _read_csv_frame(source)
    else:
        frame = _read_parquet_frame(source, max_uncompressed_bytes=max_uncompressed_bytes)
    return _from_frame(frame, target)


def _format_of(source: Any, format: str | None, filename: str | None) -> str:
    if format is not None:
        fmt = format.strip().lower().lstrip(".")
        if fmt not in FORMATS:
            raise DataError(f"unknown format '{format}'; use one of {list(FORMATS)}",
                            field="format")
        return fmt
    name = filename
    if name is None:
        if isinstance(source, str | os.PathLike):
            name = os.fspath(source)
        else:
            name = getattr(source, "name", None)
    suffix = Path(str(name)).suffix.lower() if name else ""
    if suffix not in _SUFFIXES:
        hint = f"the file name '{name}'" if name else "a file without a name"
        raise DataError(f"cannot tell the format from {hint}; give format as one of "
                        f"{list(FORMATS)} or name the file .csv, .npz or .parquet",
                        field="format")
    return _SUFFIXES[suffix]


def _read_csv_frame(source: Any) -> pd.DataFrame:
    import pandas as pd

    try:
        # compression=None: a path ending in .gz or .zip must not be inflated behind the
        # upload limit's back.
        frame = pd.read_csv(source, compression=None, low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError("the csv file is empty; it needs a header line and at least one row",
                        field="file") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"the csv file cannot be parsed: {_first_line(exc)}",
                        field="file") from exc
    except UnicodeDecodeError as exc:
        raise DataError("the csv file is not UTF-8 text", field="file") from exc
    except (ValueError, OSError) as exc:
        raise DataError(f"the csv file cannot be read: {_first_line(exc)}",
                        field="file") from exc
    return frame


def _read_parquet_frame(source: Any, *, max_uncompressed_bytes: int) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(source) as pf:
            strings = _parquet_string_columns(pf)
            meta = pf.metadata
            # Page encodings (RLE, dictionaries) inflate like compression does, so bound
            # what the columns decode to: 8 bytes a cell, strings kept as dictionaries.
            stored = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            decoded = max(stored, meta.num_rows * meta.num_columns * 8)
            if decoded > max_uncompressed_bytes:
                raise DataError(f"the parquet file holds about {decoded} bytes of uncompressed "
                                f"data, over the limit of {max_uncompressed_bytes}",
                                field="file")
            if not strings:
                return pf.read().to_pandas()
        if not isinstance(source, str | os.PathLike):
            source.seek(0)
        # reopened, now that we know which columns to keep as dictionaries
        with pq.ParquetFile(source, read_dictionary=strings) as pf:
            return pf.read().to_pandas()
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"the parquet file cannot be read: {_first_line(exc)}",
                        field="file") from exc


def _parquet_string_columns(pf: Any) -> list[str]:
    """Names of the string columns; DataError for a column that is neither numbers nor text."""
    import pyarrow as pa

    schema = pf.schema_arrow
    index = {c for c in (schema.pandas_metadata or {}).get("index_columns", [])
             if isinstance(c, str)}  # a saved DataFrame index, not a column
    strings = []
    for f in schema:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t)):
            strings.append(f.name)
        elif f.name not in index and not (pa.types.is_integer(t) or pa.types.is_floating(t)
                                          or pa.types.is_boolean(t)):
            raise DataError(f"column {f.name!r} has type {f.type}, which is not numeric; "
                            "features must be numbers and a target numbers or strings",
                            field="file")
    return strings


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _target_columns(columns: list[str], target: str | list[str] | None) -> list[str]:
    if target is None:
        return [columns[-1]]
    if isinstance(target, str):
        # "a,b" names two columns (the upload form's spelling) unless a column is so named.
        names = [target] if target in columns or "," not in target else [
            t.strip() for t in target.split(",")]
    else:
        names = [str(t) for t in target]
    if not names or any(not t for t in names):
        raise DataError("target must name at least one column", field="target")
    if len(set(names)) != len(names):
        raise DataError(f"target names a column twice: {names}", field="target")
    missing = [t for t in names if t not in columns]
    if missing:
        shown = columns if len(columns) <= 50 else columns[:50] + ["..."]
        raise DataError(f"target column {missing[0]!r} is not in the file; its columns are "
                        f"{shown}", field="target")
    return names


def _from_frame(frame: pd.DataFrame, target: str | list[str] | None) -> LoadedData:
    frame.columns = [str(c) for c in frame.columns]
    columns = list(frame.columns)
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise DataError(f"the file has two columns named {dup!r}", field="file")
    if not columns:
        raise DataError("the file has no columns", field="file")
    targets = _target_columns(columns, target)
    features = [c for c in columns if c not in targets]
    if not features:
        raise DataError(f"the file has no feature columns besides the target {targets}",
                        field="target")
    if len(frame) == 0:
        raise DataError("the file has a header but no rows", field="file")

    x = np.empty((len(frame), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = _numeric_column(frame[name], name, what="feature column")
    if len(targets) == 1:
        y = _target_column(frame[targets[0]], targets[0])
    else:
        cols = []
        for name in targets:
            if not _is_numeric(frame[name]):
                raise DataError(f"target column {name!r} is not numeric; with several target "
                                "columns (multilabel or multi-output regression) every one "
                                "must hold numbers", field="target")
            cols.append(_numeric_column(frame[name], name, what="target column", cast=None))
        y = np.stack(cols, axis=1)  # (n, k)
        if all(c.dtype.kind in "iu" for c in cols):
            y = y.astype(np.int64)
    return LoadedData(x=x, y=y, feature_names=features, target_names=targets)


def _is_numeric(col: pd.Series) -> bool:
    import pandas as pd

    dtype = col.dtype
    return (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
            and not isinstance(dtype, pd.CategoricalDtype))


def _numeric_column(col: pd.Series, name: str, *, what: str,
                    cast: type | None = np.float32) -> np.ndarray:
    """The column as finite numbers, or DataError naming the column and the first bad row."""
    if not _is_numeric(col):
        bad = _first_non_number(col)
        where = f"; first non-numeric value at row {bad[0] + 1}: {_show(bad[1])}" if bad else ""
        raise DataError(f"{what} {name!r} is not numeric ({col.dtype}){where}. Features must "
                        "be numbers: encode categories as numbers or drop the column",
                        field="file")
    values = col.to_numpy()
    if values.dtype == bool:
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iuf":  # nullable extension arrays
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    if values.dtype.kind == "f":
        _check_finite(values, f"{what} {name!r}")
    if cast is None:
        return values
    with np.errstate(over="ignore"):
        out = values.astype(cast)
    if not np.isfinite(out).all():
        row = int(np.flatnonzero(~np.isfinite(out))[0])
        raise DataError(f"{what} {name!r} holds a value too large for float32 at row "
                        f"{row + 1}: {values[row]!r}", field="file")
    return out


def _first_non_number(col: pd.Series) -> tuple[int, Any] | None:
    for i, v in enumerate(col.to_numpy(dtype=object)):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, str):
            # a csv column is text as a whole: the culprit is the first cell that is not a number
            try:
                float(v)
            except ValueError:
                return i, v
        elif isinstance(v, bool) or not isinstance(v, int | float | np.number):
            return i, v
    return None


def _check_finite(values: np.ndarray, what: str, field: str = "file") -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        flat = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))
        row = int(flat[0])
        kind = "missing (NaN)" if np.isnan(values[row]).any() else "infinite"
        raise DataError(f"{what} has a {kind} value at row {row + 1} "
                        f"({int(flat.size)} row(s) in all); remove or fill them", field=field)


def _target_column(col: pd.Series, name: str) -> np.ndarray:
    import pandas as pd

    if _is_numeric(col):
        values = _numeric_column(col, name, what="target column", cast=None)
        return values.astype(np.int64) if values.dtype.kind in "iu" else values.astype(np.float64)
    raw = col.to_numpy(dtype=object)
    out = np.empty(len(raw), dtype=object)
    for i, v in enumerate(raw):
        if isinstance(v, list | tuple | dict | np.ndarray):
            raise DataError(f"target column {name!r} holds a nested value at row {i + 1}; "
                            "labels must be strings or numbers", field="file")
        if pd.isna(v):
            raise DataError(f"target column {name!r} has a missing value at row {i + 1} "
                            "(empty cells and markers such as NA, null or None count as "
                            "missing)", field="file")
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"target column {name!r} holds bytes that are not UTF-8 at "
                                f"row {i + 1}", field="file") from exc
        out[i] = v if isinstance(v, str) else str(v)
    return out


def _read_npz(source: Any, *, max_uncompressed_bytes: int) -> LoadedData:
    try:
        with zipfile.ZipFile(source) as zf:
            members = zf.infolist()
            declared = sum(m.file_size for m in members)
            if declared > max_uncompressed_bytes:
                raise DataError(f"the npz file declares {declared} bytes uncompressed, over "
                                f"the limit of {max_uncompressed_bytes}", field="file")
            by_key = {m.filename.removesuffix(".npy"): m for m in members}
            missing = [k for k in ("x", "y") if k not in by_key]
            if missing:
                raise DataError(f"the npz file has no array {missing[0]!r}; it needs arrays "
                                f"'x' (rows x features) and 'y' (targets), it has "
                                f"{sorted(by_key)}", field="file")
            x = _read_npy_member(zf, by_key["x"], "x")
            y = _read_npy_member(zf, by_key["y"], "y")
    except zipfile.BadZipFile as exc:
        raise DataError("the file is not a valid npz (zip) archive; write it with "
                        "numpy.savez(path, x=..., y=...)", field="file") from exc
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"the npz file cannot be read: {_first_line(exc)}",
                        field="file") from exc
    return _from_arrays(x, y, where="the npz file")


def _read_npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"array {key!r} in the npz file uses an unsupported compression; "
                        "write it with numpy.savez or numpy.savez_compressed", field="file")
    # Check the header before numpy allocates what it declares: a tiny file can claim a
    # shape of 10**15 rows.
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(
                fp, max_header_size=_NPY_MAX_HEADER)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(
                fp, max_header_size=_NPY_MAX_HEADER)
    if dtype.hasobject:
        raise DataError(f"array {key!r} in the npz file is an object array, which cannot be "
                        "loaded safely; save numbers (or fixed-width strings for labels)",
                        field="file")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size:
        raise DataError(f"array {key!r} in the npz file declares {nbytes} bytes but its "
                        f"member holds {info.file_size}; the file is corrupt", field="file")
    with zf.open(info) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False,
                                        max_header_size=_NPY_MAX_HEADER)


def _from_arrays(x: np.ndarray, y: np.ndarray, *, where: str,
                 field: str = "file") -> LoadedData:
    """Check raw x and y arrays and convert them to LoadedData (npz and inline data)."""
    if x.ndim != 2:
        raise DataError(f"x in {where} must be 2-D (rows x features), it has shape "
                        f"{x.shape}", field=field)
    n, d = x.shape
    if n == 0 or d == 0:
        raise DataError(f"x in {where} has shape {x.shape}; it needs at least one row and "
                        "one feature", field=field)
    if x.dtype.kind not in "biuf":
        raise DataError(f"x in {where} must hold numbers, it has dtype {x.dtype}",
                        field=field)
    if y.ndim not in (1, 2) or len(y) != n:
        raise DataError(f"y in {where} must have one entry (or one row) per row of x: x has "
                        f"{n} rows, y has shape {y.shape}", field=field)
    if x.dtype.kind == "f":
        _check_finite(x, f"x in {where}", field)
    xf = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(xf).all():
        raise DataError(f"x in {where} holds values too large for float32", field=field)

    if y.dtype.kind in "USO":
        if y.ndim != 1:
            raise DataError(f"y in {where} holds strings; string labels must be one column",
                            field=field)
        if y.dtype.kind == "O" and not all(isinstance(v, str) for v in y):
            raise DataError(f"y in {where} mixes strings with other values", field=field)
        try:
            labels = np.char.decode(y, "utf-8") if y.dtype.kind == "S" else y
        except UnicodeDecodeError as exc:
            raise DataError(f"y in {where} holds bytes that are not UTF-8; store string "
                            "labels as UTF-8 text", field=field) from exc
        y_out = np.array([str(v) for v in labels], dtype=object)
    elif y.dtype.kind in "biu":
        y_out = y.astype(np.int64)
    elif y.dtype.kind == "f":
        _check_finite(y, f"y in {where}", field)
        y_out = y.astype(np.float64)
    else:
        raise DataError(f"y in {where} must hold numbers or strings, it has dtype {y.dtype}",
                        field=field)
    if y_out.ndim == 2 and y_out.shape[1] == 0:
        raise DataError(f"y in {where} has no columns", field=field)
    k = 1 if y_out.ndim == 1 else y_out.shape[1]
    return LoadedData(x=xf, y=y_out, feature_names=[f"x{j}" for j in range(d)],
                      target_names=["y"] if k == 1 and y_out.ndim == 1 else
                      [f"y{j}" for j in range(k)])


def load_inline(x: list[list[float]], y: list) -> LoadedData:
    """Arrays from a spec's inline data; DataError (field dataset.inline) when they do not fit."""
    where = "the inline data"
    try:
        xa = np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise DataError("inline x must be a list of rows of numbers, every row as long",
                        field="dataset.inline") from exc
    if isinstance(y, np.ndarray):
        ya = y
    elif y and all(isinstance(v, str) for v in y):
        ya = np.array(y, dtype=object)
    elif any(isinstance(v, str) for v in y):
        raise DataError("inline y mixes strings with other values", field="dataset.inline")
    else:
        try:
            ya = np.asarray(y)
        except ValueError as exc:
            raise DataError("inline y lists must all have the same length",
                            field="dataset.inline") from exc
        if ya.dtype.kind not in "biuf":
            raise DataError("inline y must be numbers, strings, or lists of numbers",
                            field="dataset.inline")
    return _from_arrays(xa, ya, where=where, field="dataset.inline")


def load_dataset(dataset_spec: DatasetSpec | Mapping[str, Any], *, seed: int = 0) -> LoadedData:
    """Load a spec's builtin or inline dataset; uploaded ones (`id`) need the service."""
    if not isinstance(dataset_spec, DatasetSpec):
        from pydantic import ValidationError

        try:
            dataset_spec = DatasetSpec.model_validate(dataset_spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise DataError(f"dataset: {first.get('msg', 'invalid')}" + (f" at {loc}" if loc
                                                                         else ""),
                            field="dataset" + (f".{loc}" if loc else "")) from exc
    if dataset_spec.builtin is not None:
        return load_builtin(dataset_spec.builtin, dataset_spec.params, seed=seed)
    if dataset_spec.inline is not None:
        return load_inline(dataset_spec.inline.x, dataset_spec.inline.y)
    raise DataError(f"dataset {{'id': {dataset_spec.id!r}}} is an uploaded dataset, which only "
                    "the service or a worker can load; read the file with read_table and pass "
                    "x and y to fit", field="dataset.id")


def seeded_rows(dataset_spec: DatasetSpec) -> bool:
    """Whether `load_dataset` draws the rows from its seed (the synthetic builtins); the
    others give the same rows for every seed."""
    return dataset_spec.builtin is not None and dataset_spec.builtin not in _FIXED_ROWS


# ---------------------------------------------------------------------------- description


def _is_string_target(y: np.ndarray) -> bool:
    return y.dtype.kind in "OUS"


def _integral(y: np.ndarray) -> bool:
    if y.dtype.kind in "biu":
        return True
    return y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((np.mod(y, 1) == 0).all())


def _class_labels(y: np.ndarray) -> tuple[Any, ...] | None:
    """Sorted distinct labels of a single target column, or None when it is not classes."""
    if y.ndim != 1:
        return None
    if _is_string_target(y):
        values = [str(v) for v in y] if y.dtype.kind == "O" else y.astype(str)
        labels = tuple(str(v) for v in np.unique(np.asarray(values, dtype=object)))
        _check_string_labels(labels)
        return labels
    if y.dtype.kind not in "biuf" or not _integral(y):
        return None
    distinct = np.unique(y)
    if len(distinct) > MAX_CLASSES:
        return None
    return tuple(int(v) for v in distinct)


def _check_string_labels(labels: tuple[str, ...]) -> None:
    """String classes are bounded like numeric ones: in number and in length."""
    if len(labels) > MAX_CLASSES:
        raise DataError(f"the target has {len(labels)} distinct string labels; a class "
                        f"target may have at most {MAX_CLASSES} classes", field="target")
    longest = max(labels, key=len, default="")
    if len(longest) > MAX_LABEL_CHARS:
        raise DataError(f"a class label has {len(longest)} characters ('{longest[:40]}...'); "
                        f"labels may have at most {MAX_LABEL_CHARS}", field="target")


def infer_task(*, numeric: bool, multilabel: bool, n_classes: int | None) -> str:
    """The task a target suggests when the spec names none: strings are classes, 0/1
    columns multilabel, a few integral labels classes, anything else regression."""
    if not numeric:
        return "classification"
    if multilabel:
        return "multilabel"
    if n_classes is not None and n_classes <= _MAX_DEFAULT_CLASSES:
        return "classification"
    return "regression"


def describe(data: LoadedData, *, default_task: str | None = None) -> DatasetInfo:
    """What resolve_spec needs to know: sizes, classes, and the task the target suggests."""
    x, y = data.x, data.y
    n_outputs = 1 if y.ndim == 1 else int(y.shape[1])
    numeric = not _is_string_target(y)
    labels = _class_labels(y)
    multilabel = (y.ndim == 2 and numeric and y.size > 0
                  and bool(np.isin(y, (0, 1)).all()))
    if default_task is None:
        default_task = infer_task(numeric=numeric, multilabel=multilabel,
                                  n_classes=None if labels is None else len(labels))
    return DatasetInfo(n_rows=int(x.shape[0]), n_features=int(x.shape[1]), n_outputs=n_outputs,
                       n_classes=None if labels is None else len(labels), class_labels=labels,
                       target_numeric=numeric, multilabel=multilabel, default_task=default_task)


def encode_targets(y: np.ndarray, *, task: str, class_labels: Sequence | None) -> np.ndarray:
    """Targets as training needs them.

    classification / metric_learning: int64 indices into `class_labels` (sorted distinct
    labels of `y` when None); regression: float32 (n, k); multilabel: float32 (n, k) of 0/1.
    """
    y = np.asarray(y)
    if task in ("classification", "metric_learning"):
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"task {task} needs one column of class labels, the target has "
                            f"shape {y.shape}", field="task")
        if class_labels is None:
            class_labels = _class_labels(y)
            if class_labels is None:
                raise DataError(f"task {task} needs class labels (strings or integers); the "
                                "target holds other numbers", field="task")
        return _label_indices(y, list(class_labels))
    if task == "regression":
        if _is_string_target(y):
            raise DataError("task regression needs a numeric target, this one holds strings",
                            field="task")
        out = y.astype(np.float32).reshape(len(y), -1)  # (n, k)
        if not np.isfinite(out).all():
            raise DataError("the regression target holds values that are NaN, infinite or too "
                            "large for float32", field="dataset")
        return out
    if task == "multilabel":
        if _is_string_target(y) or not np.isin(y, (0, 1)).all():
            raise DataError("task multilabel needs 0/1 targets, one column per label",
                            field="task")
        return y.astype(np.float32).reshape(len(y), -1)  # (n, k)
    raise DataError(f"unknown task '{task}'", field="task")


def _label_indices(y: np.ndarray, labels: list[Any]) -> np.ndarray:
    def key(v: Any) -> Any:
        # 1, 1.0 and np.int64(1) are one label; strings stay strings.
        if isinstance(v, str | np.str_):
            return str(v)
        if isinstance(v, bool | np.bool_):
            return int(v)
        if isinstance(v, int | np.integer):
            return int(v)
        if isinstance(v, float | np.floating) and float(v).is_integer():
            return int(v)
        return v

    index: dict[Any, int] = {}
    for i, label in enumerate(labels):
        index.setdefault(key(label), i)
    distinct, inverse = np.unique(y, return_inverse=True)
    codes = np.empty(len(distinct), dtype=np.int64)
    for j, v in enumerate(distinct):
        k = key(v.item() if isinstance(v, np.generic) else v)
        if k not in index:
            shown = labels if len(labels) <= 20 else labels[:20] + ["..."]
            raise DataError(f"label {k!r} is not one of the class labels {shown}",
                            field="dataset")
        codes[j] = index[k]
    return codes[inverse.reshape(-1)].astype(np.int64)


# ---------------------------------------------------------------------------- split, scaling


def split_indices(n: int, *, validation_split: float, seed: int,
                  stratify: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), int64 and sorted; the same seed gives the same split.

    round(n * validation_split) rows go to validation, by class when `stratify` is given
    and every class has two rows or more. With no room for a row on either side the split
    is skipped: every row trains and validation is empty.
    """
    if not 0.0 <= validation_split < 1.0:
        raise DataError(f"validation_split must be in [0, 1), got {validation_split}",
                        field="training.validation_split")
    everything = np.arange(n, dtype=np.int64)
    n_val = round(n * validation_split)
    if n_val <= 0 or n_val >= n:
        return everything, np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if stratify is not None:
        stratify = np.asarray(stratify)
        if len(stratify) != n:
            raise DataError(f"stratify has {len(stratify)} labels for {n} rows",
                            field="dataset")
        if stratify.ndim == 1:
            _, groups = np.unique(stratify, return_inverse=True)
            counts = np.bincount(groups)
            # each class keeps a training row; past that room, a plain shuffle
            if counts.min() >= 2 and n_val <= n - len(counts):
                per_class = _allocate(counts, n_val)
                val = [rng.permutation(np.flatnonzero(groups == c))[:k]
                       for c, k in enumerate(per_class)]
                val_idx = np.sort(np.concatenate(val)).astype(np.int64)
                return np.setdiff1d(everything, val_idx).astype(np.int64), val_idx
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def _allocate(counts: np.ndarray, n_val: int) -> np.ndarray:
    """Split n_val across classes in proportion to counts, leaving each class a training row."""
    ideal = counts * n_val / counts.sum()
    share = np.minimum(np.floor(ideal).astype(np.int64), counts - 1)
    # Largest remainders first; ties go to the earlier class so the result is deterministic.
    order = np.lexsort((np.arange(len(counts)), -(ideal - share)))
    while share.sum() < n_val:
        for c in order:
            if share.sum() >= n_val:
                break
            if share[c] < counts[c] - 1:
                share[c] += 1
    return share


@dataclass
class Standardizer:
    """Per-feature (x - mean) / std; a constant column keeps std 1 so it is only centred."""

    mean: np.ndarray  # (d,) float32
    std: np.ndarray  # (d,) float32

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """Fit on the rows given (pass the training rows only)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError(f"standardisation needs at least one row of features, got shape "
                            f"{x.shape}", field="dataset")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        constant = (x.max(axis=0) == x.min(axis=0)) | ~np.isfinite(std) | (std == 0)
        std = np.where(constant, 1.0, std)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise DataError(f"expected rows of {len(self.mean)} features, got shape {x.shape}",
                            field="x")
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Standardizer:
        try:
            mean = np.asarray(d["mean"], dtype=np.float32)
            std = np.asarray(d["std"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError("standardisation needs 'mean' and 'std' lists of numbers",
                            field="preprocessing") from exc
        if mean.ndim != 1 or mean.shape != std.shape:
            raise DataError("standardisation 'mean' and 'std' must be lists of one length",
                            field="preprocessing")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise DataError("standardisation values must be finite, std positive",
                            field="preprocessing")
        return cls(mean=mean, std=std)
