"""Sweeps (SPEC 9): submit (validate every path and value, store, start), list, read, the
leaderboard, a live event stream, cancel, extend (PATCH max_trials), delete.

The controller is store.sweeps.advance_sweep; this router runs it after a create or a
PATCH, the worker after each trial, the reconciler for every unfinished sweep."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from messaging.live_events import publish_status, set_cancel_flag
from messaging.queues import gpu_worker_known_absent
from messaging.sweeps import publish_sweep_hint, trial_sender
from mlp_engine.errors import SpecError
from mlp_engine.memory import estimate_from_info
from mlp_engine.spec import JobSpec, resolve_spec
from mlp_engine.sweep_spec import SweepSpec, check_objective, check_space, trial_target
from store.idempotency import replayed
from store.models import JobStatus, Sweep
from store.sweeps import (
    SweepStateError,
    advance_sweep,
    cancel_sweep,
    count_trials,
    create_sweep,
    delete_sweep,
    extend_sweep,
    get_sweep_for_tenant,
    leaderboard,
    list_sweeps,
    sweep_spec,
    trial_objective,
    trials_of,
)

from ..deps import ServicesDep, SessionDep, TenantDep, owned
from ..errors import Conflict, InvalidInput, Unavailable
from ..schemas import (
    SWEEP_EXAMPLES,
    ErrorBody,
    Leaderboard,
    SweepList,
    SweepPatch,
    SweepPublic,
    TrialPublic,
    ValidationErrorBody,
)
from ..specs import resolve_for_tenant
from ..sse import stream_owner
from ..sweep_sse import sweep_event_stream

__all__ = ["router", "SweepDep"]

log = logging.getLogger(__name__)

_E: dict[str, Any] = {"model": ErrorBody}
router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"],
                   responses={401: {**_E, "description": "no valid API key"},
                              429: {**_E, "description": "rate limit"}})
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {**_E, "description": "no such sweep for this API key"}}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorBody, "description": "`message` names the path or value"},
    400: {**_E, "description": "a body that is not UTF-8 JSON"},
    413: {**_E, "description": "a body over MLP_MAX_REQUEST_BYTES"}}


def sweep_of_tenant(sweep_id: str, tenant: TenantDep, session: SessionDep) -> Sweep:
    return owned(session, get_sweep_for_tenant(session, tenant.id, sweep_id), "sweep",
                 sweep_id)


SweepDep = Annotated[Sweep, Depends(sweep_of_tenant)]


def _public(session: Session, sweep: Sweep) -> SweepPublic:
    trials = trials_of(session, sweep.id)
    return SweepPublic.from_row(sweep, counts=count_trials(trials),
                                trials_total=trial_target(sweep_spec(sweep)))


def _rows(sweep: Sweep, trials: list[Any]) -> list[TrialPublic]:
    return [TrialPublic(rank=i + 1, trial=j.trial or 0, job_id=j.id, status=j.status,
                        values=j.trial_values or {}, objective=trial_objective(j, sweep),
                        epochs_run=j.epoch, epochs=j.epochs)
            for i, j in enumerate(leaderboard(sweep, trials))]


def _snapshot(session: Session, sweep: Sweep) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stream's view: the sweep object and its trials in trial order."""
    trials = trials_of(session, sweep.id)
    public = SweepPublic.from_row(sweep, counts=count_trials(trials),
                                  trials_total=trial_target(sweep_spec(sweep)))
    rows = sorted(_rows(sweep, trials), key=lambda r: r.trial)
    return public.model_dump(mode="json"), [r.model_dump(mode="json") for r in rows]


def _location(sweep_id: str) -> str:
    return f"/v1/sweeps/{sweep_id}"


def _request_hash(spec: SweepSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _advance(services: Any, session: Session, sweep_id: str) -> None:
    """One controller step now; when it fails (Redis or the database away) the reconciler
    takes it later, so the answer does not fail."""
    try:
        advance_sweep(session, sweep_id, enqueue=trial_sender(services.celery, services.redis))
    except Exception as exc:
        session.rollback()
        log.warning("sweep %s: stored, not advanced now (the reconciler will): %s",
                    sweep_id, exc)
    publish_sweep_hint(services.redis, sweep_id)


def _check_limits(spec: SweepSpec, settings: Any) -> None:
    assert spec.max_trials is not None
    if spec.max_trials > settings.max_sweep_trials:
        raise InvalidInput(f"max_trials {spec.max_trials} is over the limit "
                           f"max_sweep_trials={settings.max_sweep_trials} "
                           "(MLP_MAX_SWEEP_TRIALS)", field="max_trials")
    cap = min(settings.max_sweep_concurrent, settings.max_active_jobs_per_tenant)
    if spec.max_concurrent > cap:
        raise InvalidInput(f"max_concurrent {spec.max_concurrent} is over the limit {cap} "
                           "(MLP_MAX_SWEEP_CONCURRENT and MLP_MAX_ACTIVE_JOBS_PER_TENANT)",
                           field="max_concurrent")


@router.post("", status_code=201, response_model=SweepPublic, operation_id="createSweep",
             responses={**_INVALID,
                        409: {**_E, "description": "Idempotency-Key reused with another "
                                                   "body"},
                        503: {**_E, "description": "device 'cuda' while no GPU worker runs"}},
             summary="validate, store and start a sweep")
def create(spec: Annotated[SweepSpec, Body(openapi_examples=SWEEP_EXAMPLES)],
           response: Response, services: ServicesDep, session: SessionDep, tenant: TenantDep,
           idempotency_key: Annotated[str | None, Header(
               min_length=1, max_length=200,
               description="a repeat with the same key and body returns the same sweep")
           ] = None) -> SweepPublic:
    settings = services.settings
    digest = _request_hash(spec)
    existing = replayed(session, Sweep, tenant_id=tenant.id, key=idempotency_key,
                        request_hash=digest)
    if existing is not None:
        response.headers["Location"] = _location(existing.id)
        response.headers["Idempotent-Replayed"] = "true"
        return _public(session, existing)
    _check_limits(spec, settings)
    candidates = list(check_space(spec))  # SpecError naming base or space.<path>: 422
    limits = settings.limits()
    try:
        base = resolve_for_tenant(session, tenant_id=tenant.id,
                                  spec=JobSpec.model_validate(spec.base), limits=limits,
                                  max_job_memory_bytes=settings.max_job_memory_bytes)
    except (SpecError, InvalidInput) as exc:
        field = getattr(exc, "field", None)
        raise InvalidInput(f"base: {exc.message}", field=f"base.{field}" if field
                           else "base") from exc
    task = base.spec.task
    assert task is not None
    check_objective(spec, task=task, validation=base.info.n_rows > 0
                    and base.spec.training.validation_split > 0)
    for path, value, candidate in candidates:
        where = f"space.{path}"
        try:
            resolved = resolve_spec(candidate, base.info, limits)
        except (SpecError, ValidationError) as exc:
            message = getattr(exc, "message", None) or str(exc).splitlines()[0]
            raise InvalidInput(f"{where}: the value {value!r} cannot work: {message}",
                               field=where) from exc
        memory = estimate_from_info(resolved, base.info)
        if memory.total_bytes > settings.max_job_memory_bytes:
            raise InvalidInput(
                f"{where}: with the value {value!r} a trial would take about "
                f"{memory.total_bytes} bytes to train, over the limit max_job_memory_bytes="
                f"{settings.max_job_memory_bytes} (MLP_MAX_JOB_MEMORY_BYTES)", field=where)
    if base.spec.device == "cuda" and gpu_worker_known_absent(services.redis):
        raise Unavailable("base.device is 'cuda' but no GPU worker is running, so the "
                          "trials would wait forever; use device 'auto' or 'cpu'",
                          headers={"Retry-After": "60"})
    sweep, created = create_sweep(session, tenant_id=tenant.id, spec=spec, dataset_info=base.info,
                                  dataset_id=base.dataset_id, limits=limits,
                                  idempotency_key=idempotency_key, request_hash=digest)
    response.headers["Location"] = _location(sweep.id)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
        return _public(session, sweep)
    _advance(services, session, sweep.id)
    return _public(session, sweep)


@router.get("", response_model=SweepList, operation_id="listSweeps",
            responses={400: {**_E, "description": "bad cursor"}},
            summary="the caller's sweeps, newest first")
def list_(session: SessionDep, tenant: TenantDep,
          status: Annotated[str | None, Query(
              pattern=r"^(queued|running|succeeded|failed|cancelled)$",
              description="only sweeps in this status")] = None,
          limit: Annotated[int, Query(ge=1, le=100)] = 20,
          cursor: Annotated[str | None, Query(max_length=1000)] = None) -> SweepList:
    sweeps, next_cursor = list_sweeps(session, tenant.id, status=status, limit=limit,
                                      cursor=cursor)
    return SweepList(items=[_public(session, s) for s in sweeps], next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepPublic, responses=_NOT_FOUND,
            operation_id="getSweep", summary="the sweep: status, trial counts, best")
def get(sweep: SweepDep, session: SessionDep) -> SweepPublic:
    return _public(session, sweep)


@router.get("/{sweep_id}/trials", response_model=Leaderboard, responses=_NOT_FOUND,
            operation_id="getSweepTrials", summary="the leaderboard: trials, best first")
def trials(sweep: SweepDep, session: SessionDep) -> Leaderboard:
    return Leaderboard(sweep_id=sweep.id, metric=str(sweep.objective["metric"]),
                       mode=str(sweep.objective.get("mode")),
                       trials=_rows(sweep, trials_of(session, sweep.id)))


@router.get("/{sweep_id}/events", response_class=StreamingResponse,
            operation_id="streamSweepEvents",
            responses={**_NOT_FOUND, 200: {"content": {"text/event-stream": {
                "schema": {"type": "string"}}}, "description": "Server-Sent Events"}},
            summary="trials started, finished or pruned, new bests, then end")
def events(sweep: SweepDep, services: ServicesDep, session: SessionDep,
           request: Request) -> StreamingResponse:
    slot = services.streams.acquire(stream_owner(request, sweep.tenant_id))
    sweep_id = sweep.id
    session.close()  # the stream may last hours: it reads on its own threads
    stream = sweep_event_stream(sweep_id=sweep_id, session_factory=services.session_factory,
                                public=_snapshot, client=services.aredis,
                                poll_s=services.settings.sse_poll_s,
                                heartbeat_s=services.settings.sse_heartbeat_s, slot=slot,
                                db_limiter=services.streams.db_limiter)
    return StreamingResponse(stream, media_type="text/event-stream",
                             background=BackgroundTask(slot.release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepPublic,
             operation_id="cancelSweep",
             responses={**_NOT_FOUND, 409: {**_E, "description": "the sweep has finished"}},
             summary="cancel: no new trials; queued and running trials cancelled")
def cancel(sweep: SweepDep, services: ServicesDep, session: SessionDep) -> SweepPublic:
    try:
        sweep, stopped = cancel_sweep(session, sweep)
    except SweepStateError as exc:
        raise Conflict(exc.message) from exc
    try:
        for job in stopped:
            if job.status == JobStatus.CANCELLING:
                set_cancel_flag(services.redis, job.id)
            publish_status(services.redis, job)
    except Exception as exc:  # the database holds the request; the workers also read it
        log.warning("cancel of sweep %s: Redis does not answer: %s", sweep.id, exc)
    publish_sweep_hint(services.redis, sweep.id)
    return _public(session, sweep)


@router.patch("/{sweep_id}", response_model=SweepPublic, operation_id="extendSweep",
              responses={**_NOT_FOUND, **_INVALID,
                         409: {**_E, "description": "the sweep was cancelled"}},
              summary="raise max_trials (a finished sweep runs again)")
def extend(body: SweepPatch, sweep: SweepDep, services: ServicesDep,
           session: SessionDep) -> SweepPublic:
    if body.max_trials > services.settings.max_sweep_trials:
        raise InvalidInput(f"max_trials {body.max_trials} is over the limit "
                           f"max_sweep_trials={services.settings.max_sweep_trials} "
                           "(MLP_MAX_SWEEP_TRIALS)", field="max_trials")
    try:
        sweep = extend_sweep(session, sweep, body.max_trials)
    except SweepStateError as exc:
        raise Conflict(exc.message) from exc
    except ValueError as exc:
        raise InvalidInput(str(exc), field="max_trials") from exc
    _advance(services, session, sweep.id)
    session.refresh(sweep)
    return _public(session, sweep)


@router.delete("/{sweep_id}", status_code=204, response_class=Response,
               operation_id="deleteSweep",
               responses={**_NOT_FOUND, 409: {**_E, "description": "the sweep is running"}},
               summary="delete a finished sweep with its trials and their artifacts")
def delete(sweep: SweepDep, services: ServicesDep, session: SessionDep) -> Response:
    try:
        job_ids = delete_sweep(session, sweep)
    except SweepStateError as exc:
        raise Conflict(exc.message) from exc
    for job_id in job_ids:
        services.models.forget(job_id)
        try:
            services.artifacts.delete_prefix(f"jobs/{job_id}/")
        except Exception as exc:  # the records are gone; a leftover file is harmless
            log.warning("could not delete the artifacts of %s: %s", job_id, exc)
    return Response(status_code=204)
