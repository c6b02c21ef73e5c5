"""The catalog of choices and limits, and spec validation without storing a job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from messaging.queues import queue_for_device
from mlp_engine.registry import catalog as engine_catalog
from mlp_engine.spec import JobSpec

from ..deps import ServicesDep, SessionDep, TenantDep
from ..schemas import (
    MAX_PREDICT_ROWS,
    SPEC_EXAMPLES,
    ErrorBody,
    MemoryEstimatePublic,
    ValidateResult,
    ValidationErrorBody,
)
from ..specs import resolve_for_tenant, theory_of
from ..uploads import UPLOAD_FORMATS

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["catalog"],
                   responses={401: {"model": ErrorBody, "description": "no valid API key"},
                              429: {"model": ErrorBody, "description": "rate limit"}})


@router.get("/catalog", response_model=dict[str, Any], operation_id="getCatalog",
            summary="every choice with its parameters, defaults and bounds; the limits")
def get_catalog(services: ServicesDep, tenant: TenantDep) -> dict[str, Any]:
    s = services.settings
    limits = s.limits().describe()
    limits.update({
        "max_upload_bytes": s.max_upload_bytes,
        "max_request_bytes": s.max_request_bytes,
        "max_active_jobs_per_tenant": s.max_active_jobs_per_tenant,
        "max_dataset_bytes_per_tenant": s.max_dataset_bytes_per_tenant,
        "max_predict_rows": MAX_PREDICT_ROWS,
        "max_predict_cells": s.max_predict_cells,
        "max_job_memory_bytes": s.max_job_memory_bytes,
        "max_streams": s.max_streams,
        "max_streams_per_key": s.max_streams_per_key,
        "rate_limit_per_minute": s.rate_limit_per_minute,
    })
    return {**engine_catalog(), "limits": limits,
            "upload_formats": sorted(set(UPLOAD_FORMATS.values())),
            "devices": ["auto", "cpu", "cuda"]}


@router.post("/specs/validate", response_model=ValidateResult, operation_id="validateSpec",
             responses={400: {"model": ErrorBody, "description": "a body that is not UTF-8 JSON"},
                        413: {"model": ErrorBody,
                              "description": "a body over MLP_MAX_REQUEST_BYTES"},
                        422: {"model": ValidationErrorBody,
                              "description": "the spec cannot be used; `message` names the "
                                             "field or limit"}},
             summary="resolve a spec against its dataset and the limits, without storing")
def validate_spec(spec: Annotated[JobSpec, Body(openapi_examples=SPEC_EXAMPLES)],
                  services: ServicesDep, session: SessionDep,
                  tenant: TenantDep) -> ValidateResult:
    resolved = resolve_for_tenant(
        session, tenant_id=tenant.id, spec=spec, limits=services.settings.limits(),
        max_job_memory_bytes=services.settings.max_job_memory_bytes)
    theory = theory_of(resolved.spec)
    queue = queue_for_device(resolved.spec.device, services.redis)
    return ValidateResult(resolved_spec=resolved.spec.model_dump(mode="json"),
                          parameter_count=resolved.parameter_count,
                          memory_estimate=MemoryEstimatePublic(
                              bytes=resolved.memory.total_bytes,
                              summary=resolved.memory.summary(),
                              breakdown=dict(resolved.memory.breakdown)),
                          device_queue=queue, findings=resolved.findings(), **theory)
