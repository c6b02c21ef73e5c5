"""Prometheus metrics: requests and latencies by route template and status (an ASGI
middleware), failed and throttled authentications, and jobs by status and queue depth,
read from the database and Redis at scrape time (a custom collector), all in a registry
of the app's own."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from messaging.celery_factory import QUEUES
from store.status import JobStatus

__all__ = ["Observability", "MetricsMiddleware", "QUEUES", "install_access_log_redaction",
           "redact_query"]

log = logging.getLogger(__name__)


class _StateCollector(Collector):
    def __init__(self, jobs_by_status: Callable[[], dict[str, int]],
                 queue_depths: Callable[[], dict[str, int]]) -> None:
        self._jobs_by_status = jobs_by_status
        self._queue_depths = queue_depths

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("mlp_jobs", "Jobs in the database by status",
                                 labels=["status"])
        try:
            counts = self._jobs_by_status()
        except SQLAlchemyError as exc:  # a scrape must not fail because the database is down
            log.warning("metrics: cannot count jobs: %s", exc)
            counts = None
        if counts is not None:
            for status in JobStatus:
                jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        depth = GaugeMetricFamily("mlp_queue_depth",
                                  "Messages waiting in each Celery queue in Redis",
                                  labels=["queue"])
        try:
            depths = self._queue_depths()
        except redis.RedisError as exc:  # nor because Redis is
            log.warning("metrics: cannot read queue depths: %s", exc)
            depths = None
        if depths is not None:
            for queue, n in depths.items():
                depth.add_metric([queue], n)
        yield depth

    def describe(self) -> Iterable[Metric]:
        return []


class Observability:
    """The app's metrics registry and its instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mlp_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "mlp_http_request_duration_seconds", "HTTP request latency (to the response "
            "start; streams are not timed to their end)", ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.auth_failures = Counter(
            "mlp_auth_failures", "Requests refused 401 by reason: a missing, malformed or "
            "unknown (or revoked) API key", ["reason"], registry=self.registry)
        self.auth_throttled = Counter(
            "mlp_auth_throttled", "Requests refused 429 because their client address made "
            "too many failed authentications (MLP_AUTH_FAILURES_PER_MINUTE)",
            registry=self.registry)
        for reason in ("missing", "malformed", "unknown"):
            self.auth_failures.labels(reason)  # shown at 0 before the first one

    def add_state(self, *, jobs_by_status: Callable[[], dict[str, int]],
                  queue_depths: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_StateCollector(jobs_by_status, queue_depths))

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class MetricsMiddleware:
    """Counts every HTTP request by route template (`/v1/jobs/{job_id}`, not the id) so
    the label set stays small."""

    def __init__(self, app: ASGIApp, *, observability: Observability) -> None:
        self.app = app
        self.obs = observability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "seen": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and not status["seen"]:
                status["code"] = message["status"]
                status["seen"] = True
                self.obs.observe(method=scope["method"], route=_route_template(scope),
                                 status=status["code"],
                                 seconds=time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not status["seen"]:
                self.obs.observe(method=scope["method"], route=_route_template(scope),
                                 status=500, seconds=time.perf_counter() - start)


# query parameters whose values are credentials: never written to a log
_SECRET_PARAMS = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|"
    r"secret)=)[^&#\s]*")


def redact_query(path: str) -> str:
    """`path?api_key=mlp_x&limit=5` → `path?api_key=[redacted]&limit=5`."""
    return _SECRET_PARAMS.sub(r"\1[redacted]", path)


class _RedactCredentials(logging.Filter):
    """Rewrites uvicorn's access-log line so that a key sent in a query string (which the
    API refuses: keys go in the Authorization header) is not written in clear."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def install_access_log_redaction() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactCredentials) for f in access.filters):
        access.addFilter(_RedactCredentials())
