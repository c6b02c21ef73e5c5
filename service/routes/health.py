"""Liveness, readiness and Prometheus metrics; none of them needs an API key."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from ..deps import ServicesDep
from ..schemas import Health, Readiness

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, operation_id="healthz",
            summary="200 while the process lives")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, operation_id="readyz",
            responses={503: {"model": Readiness, "description": "a dependency is down"}},
            summary="200 when the database and Redis answer, else 503 naming what is down")
def readyz(services: ServicesDep) -> Readiness | JSONResponse:
    down = []
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readyz: database does not answer: %s", exc)
        down.append("database")
    try:
        services.redis.ping()
    except Exception as exc:
        log.warning("readyz: Redis does not answer: %s", exc)
        down.append("redis")
    if down:
        return JSONResponse(Readiness(status="unavailable", down=down).model_dump(),
                            status_code=503)
    return Readiness(status="ok")


@router.get("/metrics", response_class=Response, operation_id="prometheusMetrics",
            summary="Prometheus text format",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "Prometheus metrics"}})
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.observability.registry),
                    media_type=CONTENT_TYPE_LATEST)
