"""The service's errors and the one place that turns any error into an HTTP answer.

ServiceError                 (500 unless a subclass says otherwise)
 ├── BadRequest              400  a malformed request: a bad cursor, a broken multipart body
 ├── Unauthorized            401  a missing, malformed or unknown API key
 ├── NotFound                404  no such object for this tenant (another tenant's objects too)
 ├── Conflict                409  the object's state forbids it (weights before success, ...)
 ├── PayloadTooLarge         413  a body or upload over its size limit
 ├── UnsupportedMediaType    415  an upload format the service cannot read
 ├── InvalidInput            422  a value that cannot be used; `field` names it
 ├── TooManyRequests         429  a rate or quota limit; `retry_after` in seconds when known
 └── Unavailable             503  Redis or the database does not answer

Every error answer is JSON: `{"detail": ..., "message": "<what to fix>"}` where `detail`
is a list of `{"loc", "msg", "type"}` items for 422 (FastAPI's shape) and the message
otherwise. Engine errors (`SpecError`, `DataError`) become 422 naming their field; store
errors 409 (a job's state, an Idempotency-Key reused) or 400 (a bad cursor); a stored file
gone missing 404; a database or Redis that does not answer 503; an unexpected exception a
generic 500, logged with its stack trace, never sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import redis
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mlp_engine.errors import DataError, SpecError
from store.artifacts import ArtifactError
from store.errors import (
    ActiveJobsLimit,
    DatasetGone,
    DatasetInUse,
    DatasetQuota,
    IdempotencyConflict,
    InvalidCursor,
    JobStateError,
    StoreError,
)
from store.webhooks import UnsafeURL, WebhookLimit

__all__ = [
    "ServiceError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "InvalidInput",
    "TooManyRequests",
    "Unavailable",
    "install_error_handlers",
    "error_response",
    "validation_items",
]

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Root of the errors the service raises on purpose."""

    status_code = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code = 400
    type = "bad_request"


class Unauthorized(ServiceError):
    status_code = 401
    type = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status_code = 404
    type = "not_found"


class Conflict(ServiceError):
    status_code = 409
    type = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    type = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    type = "unsupported_media_type"


class InvalidInput(ServiceError):
    """A value that cannot be used; `field` is its dotted path (`dataset.id`, `x`)."""

    status_code = 422
    type = "invalid_input"

    def __init__(self, message: str, *, field: str | None = None,
                 loc_root: str = "body", error_type: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.loc_root = loc_root
        if error_type:
            self.type = error_type


class TooManyRequests(ServiceError):
    status_code = 429
    type = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}
                         if retry_after is not None else None)


class Unavailable(ServiceError):
    status_code = 503
    type = "unavailable"


# --------------------------------------------------------------------------- answers


def error_response(status_code: int, message: str, *, detail: Any = None,
                   error_type: str = "error", headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    body = {"detail": message if detail is None else detail, "message": message,
            "type": error_type}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _dotted(loc: Sequence[Any]) -> str:
    """`["body", "model", "hidden_dims", 0]` -> `model.hidden_dims.0`; a query, path or
    header parameter is named as such; the body as a whole is ``""``."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        rest = parts[1:]
        if parts[0] == "body":
            return ".".join(rest)
        return f"{parts[0]} parameter {'.'.join(rest)}" if rest else parts[0]
    return ".".join(parts)


def _clean_msg(msg: str) -> str:
    # pydantic prefixes the message of a ValueError raised in a validator
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_items(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors reduced to `loc`, `msg`, `type` (no echoed input, which can
    be large or not JSON)."""
    items = []
    for err in errors:
        loc = [p if isinstance(p, int | str) else str(p) for p in err.get("loc", ())]
        items.append({"loc": loc, "msg": _clean_msg(str(err.get("msg", "invalid value"))),
                      "type": str(err.get("type", "value_error"))})
    return items


def _describe(item: dict[str, Any]) -> str:
    field = _dotted(item["loc"])
    if item["type"] == "extra_forbidden":
        return f"unknown field '{field}': it is not part of the request; remove it"
    if item["type"] == "missing":
        return f"field '{field}' is required"
    if item["type"] == "json_invalid":
        return f"the request body is not valid JSON ({item['msg']})"
    return f"{field}: {item['msg']}" if field else item["msg"]


def _summary(items: list[dict[str, Any]], shown: int = 3) -> str:
    """The first few problems in words, each naming its field."""
    if not items:
        return "the request is not valid"
    text = "; ".join(_describe(item) for item in items[:shown])
    if len(items) > shown:
        more = len(items) - shown
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return text


def _invalid(items: list[dict[str, Any]], message: str | None = None) -> JSONResponse:
    return JSONResponse({"detail": items, "message": message or _summary(items),
                         "type": "validation_error"}, status_code=422)


def _field_items(field: str | None, message: str, error_type: str,
                 loc_root: str = "body") -> list[dict[str, Any]]:
    loc: list[Any] = [loc_root]
    if field:
        loc += [int(p) if p.isdigit() else p for p in field.split(".")]
    return [{"loc": loc, "msg": message, "type": error_type}]


def _with_field(field: str | None, message: str) -> str:
    if field and field not in message:
        return f"{field}: {message}"
    return message


async def _on_request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _invalid(_name_configured_limits(request, validation_items(exc.errors())))


# spec fields whose static bound (a sanity cap of the schema) is looser than the limit the
# service is configured with: a value past the cap is reported against the configured limit
_CONFIGURED_LIMITS: dict[tuple[str, ...], str] = {
    ("model", "hidden_layers"): "max_hidden_layers",
    ("model", "hidden_dims"): "max_hidden_layers",
    ("model", "hidden_dims", "*"): "max_hidden_width",
    ("model", "hidden_dim"): "max_hidden_width",
    ("training", "epochs"): "max_epochs",
    ("training", "batch_size"): "max_batch_size",
    ("training", "max_runtime_s"): "max_runtime_s",
}


def _name_configured_limits(request: Request, items: list[dict[str, Any]]
                            ) -> list[dict[str, Any]]:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return items
    limits = services.settings.limits().describe()
    for item in items:
        if item["type"] not in ("less_than_equal", "less_than", "too_long"):
            continue
        loc = item["loc"][1:] if item["loc"][:1] == ["body"] else item["loc"]
        path = tuple("*" if isinstance(p, int) else str(p) for p in loc)
        name = _CONFIGURED_LIMITS.get(path)
        if name is not None and name in limits:
            item["msg"] = (f"over the limit {name}={limits[name]} of this service "
                           "(GET /v1/catalog lists the limits)")
    return items


async def _on_spec_or_data_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError | DataError)
    kind = "spec_error" if isinstance(exc, SpecError) else "data_error"
    message = _with_field(exc.field, exc.message)
    return _invalid(_field_items(exc.field, exc.message, kind), message)


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if isinstance(exc, InvalidInput):
        message = _with_field(exc.field, exc.message)
        resp = _invalid(_field_items(exc.field, exc.message, exc.type, exc.loc_root), message)
        resp.headers.update(exc.headers)
        return resp
    if exc.status_code >= 500 and not isinstance(exc, Unavailable):
        log.error("service error on %s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc.status_code, exc.message, error_type=exc.type,
                          headers=exc.headers)


_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _allowed_methods(request: Request) -> str | None:
    """Every documented method at this path (Starlette's 405 names only the first route's),
    read from the app's (cached) OpenAPI paths."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        parts = re.split(r"(\{[^}]+\})", template)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m in _HTTP_METHODS}
    return ", ".join(sorted(methods)) or None


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    headers = dict(exc.headers or {})
    message = detail if isinstance(detail, str) and detail else "request failed"
    if exc.status_code == 404 and detail == "Not Found":
        message = "no such route; see /docs for the API"
    elif exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = allowed
        message = f"method {request.method} is not allowed here" + (
            f"; use {allowed}" if allowed else "")
    elif exc.status_code == 400 and detail == "There was an error parsing the body":
        message = "the request body cannot be parsed; send UTF-8 encoded JSON"
    return error_response(exc.status_code, message, error_type="http_error",
                          headers=headers)


async def _on_store_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    if isinstance(exc, UnsafeURL):  # a webhook URL the service will not send to
        message = exc.message.removeprefix("url: ")
        return _invalid(_field_items("url", message, "unsafe_url"), f"url: {message}")
    for kind, (status, error_type) in _STORE_ANSWERS.items():
        if isinstance(exc, kind):
            retry_after = getattr(exc, "retry_after_s", None)
            return error_response(status, exc.message, error_type=error_type, headers={
                "Retry-After": str(retry_after)} if retry_after is not None else None)
    return await _on_unexpected(request, exc)


# each store error's HTTP answer: (status, error type)
_STORE_ANSWERS: dict[type[StoreError], tuple[int, str]] = {
    InvalidCursor: (400, "invalid_cursor"),
    JobStateError: (409, "job_state"),
    IdempotencyConflict: (409, "idempotency_conflict"),
    DatasetInUse: (409, "dataset_in_use"),
    DatasetGone: (409, "dataset_gone"),
    DatasetQuota: (409, "quota_exceeded"),
    ActiveJobsLimit: (429, "too_many_requests"),
    WebhookLimit: (409, "quota_exceeded"),
}


async def _on_artifact_error(request: Request, exc: Exception) -> JSONResponse:
    # a stored file that is gone although its record says it exists
    log.error("artifact error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(404, f"a stored file is missing: {exc}", error_type="artifact_missing")


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "the database does not answer; retry shortly",
                          error_type="unavailable", headers={"Retry-After": "5"})


async def _on_database_busy(request: Request, exc: Exception) -> JSONResponse:
    # every pooled connection was in use for pool_timeout_s: overload, not a fault
    log.warning("no database connection free for %s %s: %s", request.method,
                request.url.path, exc)
    return error_response(503, "the service is busy (no database connection was free); "
                          "retry shortly", error_type="unavailable",
                          headers={"Retry-After": "2"})


async def _on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "Redis does not answer; retry shortly",
                          error_type="unavailable", headers={"Retry-After": "5"})


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    # the client went away mid-request (an upload cut short): its doing, not ours
    log.info("%s %s: the client disconnected before the request was read",
             request.method, request.url.path)
    return Response(status_code=499)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error; the incident was logged",
                          error_type="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Register every mapping from an exception to an HTTP answer (the only place)."""
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(SpecError, _on_spec_or_data_error)
    app.add_exception_handler(DataError, _on_spec_or_data_error)
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(StoreError, _on_store_error)
    app.add_exception_handler(ArtifactError, _on_artifact_error)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _on_database_down)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _on_database_busy)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(redis.ConnectionError, _on_redis_down)
    app.add_exception_handler(redis.TimeoutError, _on_redis_down)
    app.add_exception_handler(Exception, _on_unexpected)
