"""Datasets: multipart upload (streamed to disk, parsed off the event loop), list, read,
delete."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response

from mlp_engine.data import LoadedData, describe, read_table
from mlp_engine.spec import DatasetInfo
from store.datasets import (
    add_dataset,
    delete_dataset,
    list_datasets,
    quota_message,
    stored_bytes,
)
from store.models import Dataset, new_id, utcnow
from store.timefmt import as_utc

from ..deps import DatasetDep, ServicesDep, SessionDep, TenantDep
from ..errors import Conflict, InvalidInput
from ..schemas import DatasetList, DatasetPublic, ErrorBody, ValidationErrorBody
from ..uploads import format_of, receive_multipart

__all__ = ["router", "dataset_public"]

log = logging.getLogger(__name__)

_E: dict[str, Any] = {"model": ErrorBody}
router = APIRouter(prefix="/v1/datasets", tags=["datasets"],
                   responses={401: {**_E, "description": "no valid API key"},
                              429: {**_E, "description": "rate limit"}})
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {**_E, "description": "no such dataset for this API key"}}
_MAX_NAME = 200

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "the data: csv, npz (arrays x and y) or parquet"},
                "name": {"type": "string", "maxLength": _MAX_NAME,
                         "description": "default: the file name without its extension"},
                "target": {"type": "string",
                           "description": "target column (csv, parquet); several, "
                                          "comma-separated, for multilabel; default: the "
                                          "last column"},
                "format": {"type": "string", "enum": ["csv", "npz", "parquet"],
                           "description": "default: from the file name"},
            },
        }}},
    }
}


def dataset_public(row: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=row.id, name=row.name, format=row.format, target=[str(t) for t in row.target],
        n_rows=row.n_rows, n_features=row.n_features, n_outputs=row.n_outputs,
        n_classes=row.n_classes, class_labels=row.class_labels,
        feature_names=[str(f) for f in row.feature_names], multilabel=row.multilabel,
        bytes=row.bytes, stored_bytes=row.stored_bytes or row.bytes, sha256=row.sha256,
        created_at=as_utc(row.created_at) or row.created_at)


_PARSE_LIMITER: anyio.CapacityLimiter | None = None
_PARALLEL_PARSES = 2


def _parse_limiter() -> anyio.CapacityLimiter:
    global _PARSE_LIMITER
    if _PARSE_LIMITER is None:
        _PARSE_LIMITER = anyio.CapacityLimiter(_PARALLEL_PARSES)
    return _PARSE_LIMITER


def decoded_bytes(data: LoadedData) -> int:
    """What a dataset takes once decoded: features as float32, targets as numbers or as the
    UTF-8 text of their labels (what a quota must count, whatever the file's compression)."""
    y = data.y
    if y.dtype.kind in "OUS":
        targets = sum(len(str(v).encode()) for v in y.ravel())
    else:
        targets = int(y.nbytes)
    return int(data.x.nbytes) + targets


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInput("name must not be empty", field="name")
    if len(name) > _MAX_NAME:
        raise InvalidInput(f"name has {len(name)} characters, at most {_MAX_NAME} are allowed",
                           field="name")
    if any(ord(c) < 32 for c in name):
        raise InvalidInput("name must not contain control characters", field="name")
    return name


def _parse_target(value: str | None) -> list[str] | None:
    if value is None or not value.strip():
        return None
    names = [t.strip() for t in value.split(",")]
    if any(not t for t in names):
        raise InvalidInput(f"target {value!r} has an empty column name", field="target")
    return names


_DATASET_LINKS = {name: {"operationId": op,
                         "parameters": {"dataset_id": "$response.body#/id"}}
                  for name, op in (("GetDataset", "getDataset"),
                                   ("DeleteDataset", "deleteDataset"))}


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=_UPLOAD_BODY,
             operation_id="uploadDataset",
             responses={201: {"description": "the dataset", "links": _DATASET_LINKS},
                        400: {**_E, "description": "a malformed multipart body"},
                        409: {**_E, "description": "over the tenant's stored-bytes limit"},
                        413: {**_E, "description": "over MLP_MAX_UPLOAD_BYTES"},
                        415: {**_E, "description": "not multipart, or an unknown format"},
                        422: {"model": ValidationErrorBody,
                              "description": "the file cannot be used; `message` says why"}},
             summary="upload a dataset (multipart: file, name, target, format)")
async def upload(request: Request, response: Response, services: ServicesDep,
                 session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    settings = services.settings
    limit = settings.max_dataset_bytes_per_tenant
    used = await anyio.to_thread.run_sync(stored_bytes, session, tenant.id)
    if used >= limit:
        raise Conflict(quota_message(used, 0, limit))
    # give the connection back while the body arrives
    await anyio.to_thread.run_sync(session.rollback)

    received = await receive_multipart(request, directory=Path(settings.data_dir) / "tmp",
                                       max_file_bytes=settings.max_upload_bytes)
    try:
        fmt = format_of(received.fields.get("format"), received.filename)
        target = _parse_target(received.fields.get("target"))
        name = _check_name(received.fields.get("name")
                           or Path(received.filename or "dataset").stem or "dataset")
        path = received.path
        assert path is not None

        def parse() -> tuple[LoadedData, DatasetInfo, int]:
            data = read_table(path, format=fmt, target=target, max_uncompressed_bytes=(
                settings.max_uncompressed_bytes or 4 * settings.max_upload_bytes))
            return data, describe(data), max(received.nbytes, decoded_bytes(data))

        # a few parses at a time: each may hold up to max_uncompressed_bytes decoded
        data, info, charged = await anyio.to_thread.run_sync(parse, limiter=_parse_limiter())
        used = await anyio.to_thread.run_sync(stored_bytes, session, tenant.id)
        if used + charged > limit:
            raise Conflict(quota_message(used, charged, limit))

        dataset_id = new_id("ds")
        key = f"datasets/{dataset_id}/data.{fmt}"
        await anyio.to_thread.run_sync(services.artifacts.put_file, key, path)
        row = Dataset(
            id=dataset_id, tenant_id=tenant.id, name=name, format=fmt,
            target=list(data.target_names), n_rows=info.n_rows, n_features=info.n_features,
            n_outputs=info.n_outputs, n_classes=info.n_classes,
            class_labels=list(info.class_labels) if info.class_labels is not None else None,
            feature_names=list(data.feature_names), target_numeric=info.target_numeric,
            multilabel=info.multilabel, bytes=received.nbytes, stored_bytes=charged,
            sha256=received.sha256,
            uri=key, created_at=utcnow())

        def store() -> None:
            try:
                add_dataset(session, row, max_bytes=limit)
            except BaseException:
                services.artifacts.delete_prefix(f"datasets/{dataset_id}/")
                raise

        await anyio.to_thread.run_sync(store)
    finally:
        await anyio.to_thread.run_sync(received.cleanup)
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    # say which column was taken when the form named none (csv and parquet: the last one)
    return dataset_public(row).model_copy(
        update={"target_defaulted": target is None and fmt != "npz"})


@router.get("", response_model=DatasetList, operation_id="listDatasets",
            responses={400: {**_E, "description": "bad cursor"}},
            summary="the caller's datasets, newest first")
def list_(session: SessionDep, tenant: TenantDep,
          name: Annotated[str | None, Query(max_length=_MAX_NAME)] = None,
          limit: Annotated[int, Query(ge=1, le=100)] = 20,
          cursor: Annotated[str | None, Query(max_length=1000)] = None) -> DatasetList:
    rows, next_cursor = list_datasets(session, tenant.id, name=name, limit=limit,
                                      cursor=cursor)
    return DatasetList(items=[dataset_public(r).for_listing() for r in rows],
                       next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=_NOT_FOUND,
            operation_id="getDataset",
            summary="one dataset")
def get(dataset: DatasetDep) -> DatasetPublic:
    return dataset_public(dataset)


@router.delete("/{dataset_id}", status_code=204, response_class=Response,
               operation_id="deleteDataset",
               responses={**_NOT_FOUND,
                          409: {**_E, "description": "a queued or running job uses it"}},
               summary="delete a dataset no active job uses")
def delete(dataset: DatasetDep, services: ServicesDep, session: SessionDep) -> Response:
    dataset_id = dataset.id
    delete_dataset(session, dataset)
    try:
        services.artifacts.delete_prefix(f"datasets/{dataset_id}/")
    except Exception as exc:
        log.warning("could not delete the file of dataset %s: %s", dataset_id, exc)
    return Response(status_code=204)
