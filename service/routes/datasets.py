"""Datasets: multipart upload (streamed to disk, parsed off the event loop), list, read,
delete."""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from mlp_engine.data import LoadedData, describe, read_table
from mlp_engine.spec import DatasetInfo
from store.jobs import as_utc, dataset_in_use
from store.models import Dataset, new_id, utcnow

from ..deps import DatasetDep, ServicesDep, SessionDep, TenantDep
from ..errors import BadRequest, Conflict, InvalidInput
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
        bytes=row.bytes, sha256=row.sha256, created_at=as_utc(row.created_at) or row.created_at)


def _stored_bytes(session: Session, tenant_id: str) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(Dataset.bytes), 0))
                              .where(Dataset.tenant_id == tenant_id)) or 0)


def _quota_message(used: int, adding: int, limit: int) -> str:
    return (f"this API key stores {used} bytes of datasets; adding {adding} would pass the "
            f"limit max_dataset_bytes_per_tenant={limit} (MLP_MAX_DATASET_BYTES_PER_TENANT); "
            "delete datasets you no longer need")


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
    used = await anyio.to_thread.run_sync(_stored_bytes, session, tenant.id)
    if used >= limit:
        raise Conflict(_quota_message(used, 0, limit))
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

        def parse() -> tuple[LoadedData, DatasetInfo]:
            data = read_table(path, format=fmt, target=target, max_uncompressed_bytes=(
                settings.max_uncompressed_bytes or 4 * settings.max_upload_bytes))
            return data, describe(data)

        data, info = await anyio.to_thread.run_sync(parse)

        used = await anyio.to_thread.run_sync(_stored_bytes, session, tenant.id)
        if used + received.nbytes > limit:
            raise Conflict(_quota_message(used, received.nbytes, limit))

        dataset_id = new_id("ds")
        key = f"datasets/{dataset_id}/data.{fmt}"
        await anyio.to_thread.run_sync(services.artifacts.put_file, key, path)
        row = Dataset(
            id=dataset_id, tenant_id=tenant.id, name=name, format=fmt,
            target=list(data.target_names), n_rows=info.n_rows, n_features=info.n_features,
            n_outputs=info.n_outputs, n_classes=info.n_classes,
            class_labels=list(info.class_labels) if info.class_labels is not None else None,
            feature_names=list(data.feature_names), target_numeric=info.target_numeric,
            multilabel=info.multilabel, bytes=received.nbytes, sha256=received.sha256,
            uri=key, created_at=utcnow())
        if hasattr(Dataset, "default_task"):
            row.default_task = info.default_task  # type: ignore[attr-defined]

        def store() -> None:
            session.add(row)
            try:
                session.commit()
            except Exception:
                session.rollback()
                services.artifacts.delete_prefix(f"datasets/{dataset_id}/")
                raise

        await anyio.to_thread.run_sync(store)
    finally:
        await anyio.to_thread.run_sync(received.cleanup)
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return dataset_public(row)


def _encode_cursor(row: Dataset) -> str:
    created = as_utc(row.created_at)
    assert created is not None
    raw = json.dumps([created.isoformat(timespec="microseconds"), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, dataset_id = json.loads(raw)
        created_at = as_utc(datetime.fromisoformat(created))
        if not isinstance(dataset_id, str) or created_at is None:
            raise TypeError
    except (ValueError, TypeError) as exc:
        raise BadRequest("cursor: not a cursor this service handed out; pass next_cursor "
                         "from the previous page") from exc
    return created_at, dataset_id


@router.get("", response_model=DatasetList, operation_id="listDatasets",
            responses={400: {**_E, "description": "bad cursor"}},
            summary="the caller's datasets, newest first")
def list_(session: SessionDep, tenant: TenantDep,
          name: Annotated[str | None, Query(max_length=_MAX_NAME)] = None,
          limit: Annotated[int, Query(ge=1, le=100)] = 20,
          cursor: Annotated[str | None, Query(max_length=1000)] = None) -> DatasetList:
    q = select(Dataset).where(Dataset.tenant_id == tenant.id)
    if name is not None:
        q = q.where(Dataset.name == name)
    if cursor:
        created_at, dataset_id = _decode_cursor(cursor)
        if session.get_bind().dialect.name == "sqlite":
            created_at = created_at.replace(tzinfo=None)  # stored as naive UTC
        q = q.where(or_(Dataset.created_at < created_at,
                        and_(Dataset.created_at == created_at, Dataset.id < dataset_id)))
    rows = list(session.scalars(
        q.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return DatasetList(items=[dataset_public(r) for r in rows[:limit]], next_cursor=next_cursor)


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
    if dataset_in_use(session, dataset.id):
        raise Conflict(f"dataset {dataset.id} is used by a queued or running job; cancel the "
                       "job or wait for it to finish first")
    dataset_id = dataset.id
    session.delete(dataset)
    session.commit()
    try:
        services.artifacts.delete_prefix(f"datasets/{dataset_id}/")
    except Exception as exc:
        log.warning("could not delete the file of dataset %s: %s", dataset_id, exc)
    return Response(status_code=204)
