"""Settings of a worker process: the common ones plus threads, concurrency and timing."""

from __future__ import annotations

import os
from typing import Self

from pydantic import AliasChoices, Field, model_validator

from store.settings import CommonSettings

__all__ = ["WorkerSettings", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _alias(name: str, field: str) -> AliasChoices:
    return AliasChoices(name, field)


class WorkerSettings(CommonSettings):
    """A Celery worker's settings. Every field is read from the variable in its alias."""

    worker_threads: int | None = Field(
        default=None, ge=1, le=1024, validation_alias=_alias("MLP_WORKER_THREADS",
                                                             "worker_threads"),
        description="torch intra-op threads per training process; default: the usable "
                    "cores (one fewer in standalone mode) divided by the concurrency")
    worker_concurrency: int = Field(
        default=1, ge=1, le=256,
        validation_alias=_alias("MLP_WORKER_CONCURRENCY", "worker_concurrency"))
    worker_queues: str | None = Field(
        default=None, validation_alias=_alias("MLP_WORKER_QUEUES", "worker_queues"),
        description="comma-separated; default gpu,cpu on a machine with CUDA, else cpu")
    standalone: bool = Field(default=False,
                             validation_alias=_alias("MLP_STANDALONE", "standalone"))
    worker_max_memory_mb: int = Field(
        default=4096, ge=64,
        validation_alias=_alias("MLP_WORKER_MAX_MEMORY_MB", "worker_max_memory_mb"),
        description="a training process that grew past this is replaced after its job")
    heartbeat_s: float | None = Field(
        default=None, gt=0, le=3600,
        validation_alias=_alias("MLP_HEARTBEAT_S", "heartbeat_s"),
        description="how often a running job renews its lease; default lease/4, at most 10 s")
    checkpoint_interval_s: float = Field(
        default=5.0, ge=0, le=86_400,
        validation_alias=_alias("MLP_CHECKPOINT_INTERVAL_S", "checkpoint_interval_s"),
        description="with no training.checkpoint_every, checkpoint each epoch but at most "
                    "once per this many seconds")
    metrics_flush_s: float = Field(
        default=1.0, ge=0, le=60,
        validation_alias=_alias("MLP_METRICS_FLUSH_S", "metrics_flush_s"))
    pack_max_trials: int = Field(
        default=16, ge=1, le=256,
        validation_alias=_alias("MLP_PACK_MAX_TRIALS", "pack_max_trials"),
        description="a sweep's queued trials that share an architecture (mlp_engine.packed) "
                    "are trained together, as one batched model in one training process, "
                    "up to this many; 1 trains every trial alone")
    cancel_poll_s: float = Field(
        default=0.2, ge=0, le=60, validation_alias=_alias("MLP_CANCEL_POLL_S", "cancel_poll_s"))
    max_log_lines_per_job: int = Field(
        default=10_000, ge=1,
        validation_alias=_alias("MLP_MAX_LOG_LINES_PER_JOB", "max_log_lines_per_job"),
        description="log lines kept per job; past it, one 'log truncated' line")
    max_log_line_chars: int = Field(
        default=2_000, ge=80,
        validation_alias=_alias("MLP_MAX_LOG_LINE_CHARS", "max_log_line_chars"),
        description="characters kept of one log line")

    webhook_senders: int = Field(
        default=8, ge=0, le=256,
        validation_alias=_alias("MLP_WEBHOOK_SENDERS", "webhook_senders"),
        description="webhook deliveries this worker sends at once (from its main process); "
                    "0: this worker sends none")
    webhook_poll_s: float = Field(
        default=1.0, gt=0, le=60, validation_alias=_alias("MLP_WEBHOOK_POLL_S", "webhook_poll_s"),
        description="how often the worker looks for due webhook deliveries")
    webhook_lease_s: float = Field(
        default=60.0, ge=11, le=3600,
        validation_alias=_alias("MLP_WEBHOOK_LEASE_S", "webhook_lease_s"),
        description="a sender's claim on a delivery (longer than the 10 s an attempt may "
                    "take); a delivery whose sender died is sent again once it lapses")
    webhook_retry_base_s: float = Field(
        default=10.0, gt=0, le=3600,
        validation_alias=_alias("MLP_WEBHOOK_RETRY_BASE_S", "webhook_retry_base_s"),
        description="delay before the first retry; each retry waits twice as long as the "
                    "one before (with jitter), up to MLP_WEBHOOK_RETRY_MAX_DELAY_S")
    webhook_retry_max_delay_s: float = Field(
        default=1800.0, gt=0, le=86_400,
        validation_alias=_alias("MLP_WEBHOOK_RETRY_MAX_DELAY_S", "webhook_retry_max_delay_s"))
    webhook_retry_window_s: float = Field(
        default=21_600.0, gt=0, le=30 * 86_400,
        validation_alias=_alias("MLP_WEBHOOK_RETRY_WINDOW_S", "webhook_retry_window_s"),
        description="how long after its first attempt a delivery is retried before it is "
                    "marked failed (default 6 hours)")

    @model_validator(mode="after")
    def _check_queues(self) -> Self:
        if self.worker_queues is not None:
            queues = [q.strip() for q in self.worker_queues.split(",") if q.strip()]
            bad = [q for q in queues if q not in ("cpu", "gpu")]
            if bad or not queues:
                raise ValueError(f"MLP_WORKER_QUEUES must list cpu and/or gpu, not "
                                 f"{self.worker_queues!r}")
        return self

    def queues(self, *, cuda: bool) -> list[str]:
        if self.worker_queues:
            return [q.strip() for q in self.worker_queues.split(",") if q.strip()]
        return ["gpu", "cpu"] if cuda else ["cpu"]

    def heartbeat_interval(self) -> float:
        if self.heartbeat_s is not None:
            return min(self.heartbeat_s, self.lease_seconds / 2)
        return max(0.5, min(self.lease_seconds / 4, 10.0))

    def torch_threads(self, concurrency: int | None = None) -> int:
        """Intra-op threads for one training process.

        Oversubscribing cores is what hurts: a 2-thread torch training slows 10-20x when
        another process takes one of its two cores, while a 1-thread one keeps its pace.
        So the worker divides the cores it may use by its concurrency and, in standalone
        mode, leaves one core to the API.
        """
        if self.worker_threads is not None:
            return self.worker_threads
        cores = usable_cores()
        if self.standalone and cores > 1:
            cores -= 1
        return max(1, cores // max(1, concurrency or self.worker_concurrency))
