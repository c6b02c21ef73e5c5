"""Prometheus metrics: requests and latencies by route template and status (an ASGI
middleware), and jobs by status and queue depth, read from the database and Redis at
scrape time (a custom collector), all in a registry of the app's own."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from messaging.celery_factory import QUEUES
from store.status import JobStatus

__all__ = ["Observability", "MetricsMiddleware", "QUEUES"]

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
        except Exception as exc:  # a scrape must not fail because the database is down
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
        except Exception as exc:
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
