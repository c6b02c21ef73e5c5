"""Jobs: create (validate, store, queue), list, read, cancel, delete, and what a job
produces: per-epoch metrics, a live event stream, its log, weights, a model card,
predictions."""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from messaging.live_events import publish_status, set_cancel_flag
from messaging.queues import (
    enqueue_job,
    fair_priority,
    gpu_worker_known_absent,
    queue_for_device,
)
from mlp_engine.spec import JobSpec
from store.idempotency import replayed
from store.jobs import (
    create_job,
    delete_job,
    get_metrics,
    jobs_ahead,
    list_jobs,
    mark_enqueued,
    request_cancel,
)
from store.logs import get_log_lines
from store.models import Job, JobStatus

from ..deps import JobDep, ServicesDep, SessionDep, TenantDep
from ..errors import Conflict, InvalidInput, NotFound, Unavailable
from ..exports import onnx_available, onnx_export
from ..schemas import (
    SPEC_EXAMPLES,
    Artifact,
    ErrorBody,
    FindingsPublic,
    JobList,
    JobPublic,
    LayerRow,
    MetricsPublic,
    ModelCard,
    PredictRequest,
    PredictResult,
    ValidationErrorBody,
    WeightsFormat,
)
from ..specs import request_hash, resolve_for_tenant
from ..sse import format_log_line, job_event_stream, job_log_stream, stream_owner

__all__ = ["router", "etag_matches"]

log = logging.getLogger(__name__)

Responses = dict[int | str, dict[str, Any]]
_E: dict[str, Any] = {"model": ErrorBody}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses={401: {**_E, "description": "no valid API key"},
                              429: {**_E, "description": "rate limit"}})
_NOT_FOUND: Responses = {404: {**_E, "description": "no such job for this API key"}}
_INVALID: Responses = {
    422: {"model": ValidationErrorBody, "description": "`message` names the field"}}
_NOT_READY: Responses = {409: {**_E, "description": "the job has not succeeded"}}
# every route with a JSON body: the body may be unparsable, or over MLP_MAX_REQUEST_BYTES
_UNPARSABLE: Responses = {400: {**_E, "description": "a body that is not UTF-8 JSON"},
                          413: {**_E, "description": "a body over MLP_MAX_REQUEST_BYTES"}}
_JOB_ID = {"job_id": "$response.body#/id"}
# OpenAPI links: what a created job's id opens (clients and fuzzers follow them)
_JOB_LINKS = {name: {"operationId": op, "parameters": _JOB_ID} for name, op in (
    ("GetJob", "getJob"), ("CancelJob", "cancelJob"), ("DeleteJob", "deleteJob"),
    ("GetJobMetrics", "getJobMetrics"), ("GetJobWeights", "getJobWeights"),
    ("GetModelCard", "getModelCard"), ("Predict", "predict"))}


def _public(job: Job) -> JobPublic:
    return JobPublic.from_row(job)


def _location(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


# --------------------------------------------------------------------------- create, list


@router.post(
    "", status_code=201, response_model=JobPublic, operation_id="createJob",
    responses={201: {"description": "the job, queued", "links": _JOB_LINKS},
               **_INVALID, **_UNPARSABLE,
               409: {**_E, "description": "Idempotency-Key reused with another body"},
               503: {**_E, "description": "device 'cuda' while no GPU worker runs (nothing "
                                          "stored); or the job is stored but Redis does not "
                                          "answer; it "
                                          "is queued again once Redis is back"}},
    summary="validate, store and queue a training job")
def create(spec: Annotated[JobSpec, Body(openapi_examples=SPEC_EXAMPLES)],
           response: Response, services: ServicesDep, session: SessionDep, tenant: TenantDep,
           idempotency_key: Annotated[str | None, Header(
               min_length=1, max_length=200,
               description="a repeat with the same key and body returns the same job")
           ] = None) -> JobPublic:
    settings = services.settings
    digest = request_hash(spec)
    existing = replayed(session, Job, tenant_id=tenant.id, key=idempotency_key,
                        request_hash=digest)
    if existing is not None:
        response.headers["Location"] = _location(existing.id)
        response.headers["Idempotent-Replayed"] = "true"
        return _public(existing)
    # the active-jobs limit and the dataset's presence are checked, race-free, with the
    # insert (store.jobs.create_job)
    resolved = resolve_for_tenant(session, tenant_id=tenant.id, spec=spec,
                                  limits=settings.limits(),
                                  max_job_memory_bytes=settings.max_job_memory_bytes)
    if resolved.spec.device == "cuda" and gpu_worker_known_absent(services.redis):
        raise Unavailable(
            "device 'cuda' was asked for but no GPU worker is running, so the job would wait "
            "forever; use device 'auto' or 'cpu', or start a worker with a GPU "
            "(mlpctl worker --queues gpu)", headers={"Retry-After": "60"})
    queue = queue_for_device(resolved.spec.device, services.redis)
    job, created = create_job(
        session, tenant_id=tenant.id, spec=resolved.spec.model_dump(mode="json"),
        name=resolved.spec.name, dataset_id=resolved.dataset_id, device=resolved.spec.device,
        queue=queue, parameter_count=resolved.parameter_count,
        epochs=resolved.spec.training.epochs, idempotency_key=idempotency_key,
        request_hash=digest, max_active=settings.max_active_jobs_per_tenant,
        findings=resolved.findings())
    response.headers["Location"] = _location(job.id)
    if not created:  # an identical request won the race for the same Idempotency-Key
        response.headers["Idempotent-Replayed"] = "true"
        return _public(job)
    # the answer shows the job as created (queued): a fast worker may already have it
    public = _public(job)
    try:
        enqueue_job(services.celery, job.id, queue, redis=services.redis,
                    priority=fair_priority(jobs_ahead(session, job)))
    except Exception as exc:  # kombu and redis-py raise several kinds when Redis is away
        log.warning("job %s stored but not queued: %s", job.id, exc)
        raise Unavailable(
            f"job {job.id} is stored (status queued) but Redis does not answer; it will be "
            "queued again automatically once Redis is back",
            headers={"Location": _location(job.id), "Retry-After": "30"}) from exc
    mark_enqueued(session, job.id)
    return public


@router.get("", response_model=JobList, operation_id="listJobs",
            responses={400: {**_E, "description": "bad cursor"}},
            summary="the caller's jobs, newest first")
def list_(services: ServicesDep, session: SessionDep, tenant: TenantDep,
          status: Annotated[JobStatus | None, Query(description="only jobs in this status")
                            ] = None,
          name: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$")] = None,
          limit: Annotated[int, Query(ge=1, le=100)] = 20,
          cursor: Annotated[str | None, Query(max_length=1000,
                                              description="next_cursor of the previous page")
                            ] = None,
          sweep_id: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$",
                                                description="only this sweep's trials")
                              ] = None) -> JobList:
    jobs, next_cursor = list_jobs(session, tenant.id, status=status, name=name, limit=limit,
                                  cursor=cursor, sweep_id=sweep_id)
    return JobList(items=[_public(j).for_listing() for j in jobs], next_cursor=next_cursor)


# --------------------------------------------------------------------------- one job


@router.get("/{job_id}", response_model=JobPublic, responses=_NOT_FOUND, summary="the job",
            operation_id="getJob")
def get(job: JobDep) -> JobPublic:
    return _public(job)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             operation_id="cancelJob",
             responses={**_NOT_FOUND, 409: {**_E, "description": "the job has finished"}},
             summary="cancel: a queued job at once, a running one at the next batch")
def cancel(job: JobDep, services: ServicesDep, session: SessionDep) -> JobPublic:
    job = request_cancel(session, job)
    try:
        if job.status == JobStatus.CANCELLING:
            set_cancel_flag(services.redis, job.id)
        publish_status(services.redis, job)
    except Exception as exc:  # the database holds the request; the worker also reads it
        log.warning("cancel of %s: Redis does not answer: %s", job.id, exc)
    return _public(job)


@router.delete("/{job_id}", status_code=204, response_class=Response, operation_id="deleteJob",
               responses={**_NOT_FOUND, 409: {**_E, "description": "the job is active"}},
               summary="delete a finished job with its metrics and artifacts")
def delete(job: JobDep, services: ServicesDep, session: SessionDep) -> Response:
    job_id = job.id
    delete_job(session, job)
    services.models.forget(job_id)
    try:
        services.artifacts.delete_prefix(f"jobs/{job_id}/")
    except Exception as exc:  # the record is gone; a leftover file is harmless
        log.warning("could not delete the artifacts of %s: %s", job_id, exc)
    return Response(status_code=204)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=_NOT_FOUND,
            operation_id="getJobMetrics",
            summary="the per-epoch records")
def metrics(job: JobDep, session: SessionDep,
            since: Annotated[int | None, Query(ge=0, le=2**31,
                                               description="only epochs after this one")
                             ] = None) -> MetricsPublic:
    records = get_metrics(session, job.id, since=since)
    return MetricsPublic.model_validate({"job_id": job.id, "epochs": records})


@router.get("/{job_id}/findings", response_model=FindingsPublic, responses=_NOT_FOUND,
            operation_id="getJobFindings", summary="what the rules found about the job")
def findings(job: JobDep) -> FindingsPublic:
    return FindingsPublic(job_id=job.id, findings=JobPublic.from_row(job).findings)


@router.get("/{job_id}/events", response_class=StreamingResponse, operation_id="streamJobEvents",
            responses={**_NOT_FOUND, 200: {"content": {"text/event-stream": {
                "schema": {"type": "string"}}}, "description": "Server-Sent Events"}},
            summary="live status, metrics and findings as Server-Sent Events")
def events(job: JobDep, services: ServicesDep, session: SessionDep, request: Request,
           last_event_id: Annotated[str | None, Header(
               max_length=20, description="the last epoch received, to resume")] = None
           ) -> StreamingResponse:
    since = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    job_id = job.id
    # bounded per API key and in total (429 beyond), before anything is held
    slot = services.streams.acquire(stream_owner(request, job.tenant_id))
    session.close()  # give the connection back: the stream may last hours
    stream = job_event_stream(job_id=job_id, session_factory=services.session_factory,
                              client=services.aredis, poll_s=services.settings.sse_poll_s,
                              heartbeat_s=services.settings.sse_heartbeat_s,
                              last_epoch=since, slot=slot,
                              db_limiter=services.streams.db_limiter)
    return StreamingResponse(stream, media_type="text/event-stream",
                             background=BackgroundTask(slot.release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


LAST_LINE_HEADER = "X-Log-Last-Line"


@router.get("/{job_id}/logs", response_class=StreamingResponse, operation_id="getJobLogs",
            responses={**_NOT_FOUND, 200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "one line per log line: `<RFC 3339 time> <LEVEL> <message>`; "
                               f"`{LAST_LINE_HEADER}` is the number of the last line sent "
                               "(pass it back as `since`); with follow=true, chunked until "
                               "the job ends"}},
            summary="the job's log: start, device, data, epochs, warnings, errors")
def logs(job: JobDep, services: ServicesDep, session: SessionDep, request: Request,
         since: Annotated[int | None, Query(ge=0, le=2**31,
                                            description="only lines after this line number")
                          ] = None,
         follow: Annotated[bool, Query(description="stream new lines until the job ends")
                           ] = False) -> Response:
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if not follow:
        lines = get_log_lines(session, job.id, since=since)
        last = lines[-1].line_no if lines else since or 0
        return Response("".join(format_log_line(line) for line in lines),
                        media_type="text/plain; charset=utf-8",
                        headers={**headers, LAST_LINE_HEADER: str(last)})
    job_id = job.id
    # a follow stream counts as an event stream: the same bounds, the same database threads
    slot = services.streams.acquire(stream_owner(request, job.tenant_id))
    session.close()  # give the connection back: the stream may last hours
    stream = job_log_stream(job_id=job_id, session_factory=services.session_factory,
                            since=since or 0, poll_s=services.settings.sse_poll_s, slot=slot,
                            db_limiter=services.streams.db_limiter)
    return StreamingResponse(stream, media_type="text/plain; charset=utf-8",
                             background=BackgroundTask(slot.release),
                             headers={**headers, "X-Accel-Buffering": "no"})


# --------------------------------------------------------------------------- results


def _require_success(job: Job, what: str) -> None:
    """Weights exist once a job has succeeded, or when a rule of diagnostics.stop_on or a
    sweep's early stopping (pruned) ended it (the weights of its last epoch)."""
    if not job.weights_uri or job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                 JobStatus.PRUNED):
        raise Conflict(f"job {job.id} is {job.status}; {what} exist only once it has "
                       "succeeded")
    if job.status == JobStatus.FAILED and job.error_type != "rule":
        raise Conflict(f"job {job.id} failed; {what} exist only once a job has succeeded")


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags


@router.get("/{job_id}/weights", response_class=FileResponse, operation_id="getJobWeights",
            responses={**_NOT_FOUND, **_NOT_READY,
                       200: {"content": {"application/octet-stream": {
                           "schema": {"type": "string", "format": "binary"}}},
                           "description": "safetensors (or a torch state_dict with "
                                          "format=pt, or an ONNX model that takes raw "
                                          "features with format=onnx); ETag is the sha256"},
                       304: {"description": "If-None-Match matched the ETag"},
                       503: {**_E, "description": "format=onnx while another export runs "
                                                  "in this process (Retry-After)"}},
            summary="download the trained weights")
def weights(job: JobDep, services: ServicesDep,
            format: Annotated[WeightsFormat, Query(
                description="safetensors (default), pt (torch state_dict) or onnx (ONNX "
                            "model with the preprocessing folded in, exported on the first "
                            "request)")] = "safetensors",
            if_none_match: Annotated[str | None, Header(max_length=1000)] = None) -> Response:
    _require_success(job, "weights")
    if format == "pt":
        uri, sha, suffix = job.weights_pt_uri, job.weights_pt_sha256, "pt"
        if not uri:
            raise NotFound(f"job {job.id} has no torch state_dict export; download the "
                           "safetensors file")
    elif format == "onnx":
        if not onnx_available():
            raise NotFound("this server cannot export ONNX: the onnxscript and onnx packages "
                           "are not installed (the [server] extra brings them)")
        assert job.weights_uri is not None
        # a sync route: this runs in a worker thread, and the first request exports
        uri, sha = onnx_export(services.artifacts, job_id=job.id, weights_key=job.weights_uri,
                               weights_sha256=job.weights_sha256)
        suffix = "onnx"
    else:
        uri, sha, suffix = job.weights_uri, job.weights_sha256, "safetensors"
    assert uri is not None
    etag = f'"{sha}"'
    if sha and etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    path = services.artifacts.local_path(uri, sha256=sha)
    headers = {"ETag": etag} if sha else {}
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{job.id}.{suffix}", headers=headers)


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_MAX_HEADER = 100 * 1024 * 1024


def _read_safetensors_header(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensor table and metadata of a safetensors file, from its JSON header alone
    (8 bytes little-endian length, then JSON): no torch, no tensor data read."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > _MAX_HEADER:
            raise ValueError(f"safetensors header of {n} bytes")
        header = json.loads(fh.read(n))
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata


_TENSOR_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3,
                 "num_batches_tracked": 4}


def _layer_order(name: str) -> tuple[list[Any], int, str]:
    """Module path in natural order (`net.2` before `net.10`), then weight, bias, stats."""
    module, _, leaf = name.rpartition(".")
    path = [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", module) if p]
    return path, _TENSOR_ORDER.get(leaf, 9), leaf


def _json_field(metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except ValueError:
        return None


@router.get("/{job_id}/model", response_model=ModelCard, operation_id="getModelCard",
            responses={**_NOT_FOUND, **_NOT_READY}, summary="the model card")
def model_card(job: JobDep, services: ServicesDep) -> ModelCard:
    _require_success(job, "a model card")
    assert job.weights_uri is not None
    header, metadata = _read_safetensors_header(str(services.artifacts.local_path(
        job.weights_uri, sha256=job.weights_sha256)))
    layers = []
    for name in sorted(header, key=_layer_order):
        info = header[name]
        shape = [int(d) for d in info.get("shape", [])]
        layers.append(LayerRow(name=name, shape=shape, dtype=str(info.get("dtype", "")),
                               parameters=math.prod(shape),
                               trainable=not name.endswith(_BUFFERS)))
    spec = _json_field(metadata, "spec") or job.spec
    preprocessing = _json_field(metadata, "preprocessing")
    labels = (preprocessing or {}).get("class_labels")
    public = JobPublic.from_row(job)
    return ModelCard(
        job_id=job.id, name=job.name, task=spec.get("task"), spec=spec, layers=layers,
        parameter_count=sum(r.parameters for r in layers if r.trainable),
        preprocessing=preprocessing, class_labels=labels, metrics=public.metrics,
        loss_unit=_loss_unit(spec),
        weights=(public.artifacts or {}).get("weights") or Artifact(), findings=public.findings,
        formats=["safetensors", *(["pt"] if job.weights_pt_uri else []),
                 *(["onnx"] if onnx_available() else [])])


def _loss_unit(spec: dict[str, Any]) -> str:
    from mlp_engine.registry import LOSSES

    entry = LOSSES.get(str((spec.get("loss") or {}).get("name")))
    unit = entry.extra.get("unit") if entry is not None else None
    return str(unit) if unit else "the loss's own units (see GET /v1/catalog → losses)"


@router.post("/{job_id}/predict", response_model=PredictResult, operation_id="predict",
             responses={**_NOT_FOUND, **_NOT_READY, **_INVALID, **_UNPARSABLE},
             summary="predictions of the trained model for raw feature rows")
def predict(body: PredictRequest, job: JobDep, services: ServicesDep,
            top_k: Annotated[int | None, Query(
                ge=1, le=1000, description="classification: only the k most probable "
                                           "classes of each row, with their labels")
            ] = None) -> PredictResult:
    _require_success(job, "predictions")
    assert job.weights_uri is not None
    path = str(services.artifacts.local_path(job.weights_uri, sha256=job.weights_sha256))
    if isinstance(body.x[0], dict):  # rows by feature name: the weights file names them
        _, metadata = _read_safetensors_header(path)
        names = (_json_field(metadata, "preprocessing") or {}).get("feature_names") or []
        try:
            x = body.rows([str(n) for n in names])
        except ValueError as exc:
            raise InvalidInput(str(exc), field="x") from None
    else:
        x = body.rows(())
    model_spec = job.spec.get("model") or {}
    width = model_spec.get("input_dim")
    if width is not None and len(x[0]) != width:
        raise InvalidInput(f"x rows have {len(x[0])} features but the model takes "
                           f"{width}", field="x")
    # the answer's size is bounded before anything is computed (SPEC 7)
    outputs = int(model_spec.get("output_dim") or 1)
    if top_k is not None and job.spec.get("task") == "classification":
        outputs = min(outputs, top_k)
    cells, limit = len(x) * outputs, services.settings.max_predict_cells
    if cells > limit:
        raise InvalidInput(
            f"{len(x)} rows × {outputs} outputs is {cells} values, over the limit "
            f"max_predict_cells={limit} (MLP_MAX_PREDICT_CELLS); send fewer rows"
            + (" or ask for ?top_k=k classes" if job.spec.get("task") == "classification"
               and top_k is None else ""), field="x")
    result = services.models.predict(job_id=job.id, sha256=job.weights_sha256 or "",
                                     path=path, x=x, top_k=top_k)
    return PredictResult.model_validate(result)
