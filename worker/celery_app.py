"""The worker's Celery app: `celery -A worker.celery_app worker -Q cpu --concurrency 1`.

Configuration comes from the environment (worker.settings.WorkerSettings). Without `-Q`, a
worker consumes `gpu,cpu` on a machine with CUDA and `cpu` elsewhere (MLP_WORKER_QUEUES
overrides). The main process also announces GPU workers on Redis (so the API routes
`device: auto` jobs to them).

Workers do not re-queue lost jobs: the reconciler (`store.reconcile.recover_jobs`) belongs to
the API process alone (service/reconciler.py, at start and every MLP_RECONCILE_INTERVAL_S).
The main process also sends webhook deliveries (worker.webhooks), from the database.
A delivery that finds its job's training process dead takes the job over at once
(worker.runner); a job whose whole worker died waits for its lease to lapse and the
reconciler to queue it again.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from typing import Any

from celery import signals

from messaging.celery_factory import make_celery
from messaging.queues import gpu_worker_key
from store.settings import ConfigError

from .settings import WorkerSettings

__all__ = ["celery_app", "settings", "cuda_available"]

log = logging.getLogger(__name__)

# makes torch.cuda.is_available() fork-safe in the main process (NVML, no CUDA context)
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

settings = WorkerSettings.load()
if not settings.redis_url:
    raise ConfigError("REDIS_URL is not set: a worker needs the Redis the API uses "
                      "(`mlpctl standalone` sets it for its own worker)")

celery_app = make_celery(settings.redis_url, include=["worker.tasks"],
                         max_runtime_s=settings.max_runtime_s)
celery_app.conf.update(
    worker_concurrency=settings.worker_concurrency,
    # KiB; checked after each task, so a process that grew is replaced between jobs
    worker_max_memory_per_child=settings.worker_max_memory_mb * 1024,
    # a backstop above every job's own max_runtime_s (checked by the engine per batch)
    task_soft_time_limit=settings.max_runtime_s + 600,
    task_time_limit=settings.max_runtime_s + 900,
    worker_send_task_events=False,
    worker_cancel_long_running_tasks_on_connection_loss=False,
)

_state: dict[str, Any] = {"concurrency": settings.worker_concurrency, "gpu": False}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


@signals.celeryd_after_setup.connect
def _choose_queues(sender: str, instance: Any, conf: Any, **_: Any) -> None:
    """Apply the default queues when `-Q` was not given, and check GPU queues."""
    _state["concurrency"] = getattr(instance, "concurrency", None) or settings.worker_concurrency
    _state["hostname"] = sender
    queues = instance.app.amqp.queues
    cuda = cuda_available()
    if getattr(queues, "_consume_from", None) is None:
        queues.select(settings.queues(cuda=cuda))
    consuming = set(queues.consume_from)
    if "gpu" in consuming and not cuda:
        if consuming == {"gpu"}:
            raise ConfigError("this worker was asked to consume the gpu queue, but CUDA is not "
                              "available here")
        log.error("no CUDA here: not consuming the gpu queue")
        queues.deselect(["gpu"])
    _state["gpu"] = "gpu" in set(queues.consume_from)
    # load the engine once here: training processes are forked from this one (also when one
    # is replaced after worker_max_memory_per_child), so none pays for the imports again
    import mlp_engine.data
    import mlp_engine.training
    import mlp_engine.weights  # noqa: F401

    # pandas and scikit-learn are imported lazily by the data loaders; torch._dynamo by
    # torch.optim on the first optimizer (about 3 s, in every new training process, which
    # with worker_max_memory_per_child can mean every job). None starts a thread.
    for heavy in ("pandas", "sklearn.datasets", "torch._dynamo"):
        try:
            importlib.import_module(heavy)
        except ImportError as exc:  # pragma: no cover - all are dependencies
            log.warning("could not preload %s (%s); each training process imports it "
                        "itself", heavy, exc)
    log.info("worker %s consumes %s with %s process(es), %s torch thread(s) each",
             sender, sorted(queues.consume_from), _state["concurrency"],
             settings.torch_threads(_state["concurrency"]))


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    from store.db import init_db

    init_db(settings.database_url)  # type: ignore[arg-type]
    if settings.webhook_senders > 0:
        from .webhooks import WebhookSender, sender_id

        sender = WebhookSender(settings, worker_id=sender_id(
            _state.get("hostname") or socket.gethostname()))
        _state["webhooks"] = sender
        sender.start()
    if _state["gpu"]:
        thread = _GpuAnnouncer(worker_name=_state.get("hostname") or socket.gethostname())
        _state["housekeeping"] = thread
        thread.start()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    for name in ("housekeeping", "webhooks"):
        thread = _state.pop(name, None)
        if thread is not None:
            thread.stop()


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    """In each training process: torch threads from the cores this worker may use."""
    import torch

    threads = settings.torch_threads(_state["concurrency"])
    torch.set_num_threads(threads)
    os.environ["MLP_TORCH_THREADS"] = str(threads)
    from . import tasks

    tasks.reset_context()


class _GpuAnnouncer(threading.Thread):
    """In the main process of a GPU worker: keeps `mlp:workers:gpu:<name>` alive (a key
    with a TTL), so the API knows a GPU worker is there."""

    interval = 10.0

    def __init__(self, *, worker_name: str) -> None:
        super().__init__(name="mlp-gpu-announcer", daemon=True)
        self.worker_name = worker_name
        self._stop_event = threading.Event()

    def run(self) -> None:
        import redis as redis_lib

        from messaging.live_events import redis_from_url

        redis = redis_from_url(settings.redis_url)  # type: ignore[arg-type]
        key = gpu_worker_key(self.worker_name)
        try:
            while True:
                try:
                    redis.set(key, "1", ex=int(self.interval * 3))
                except (redis_lib.RedisError, OSError) as exc:
                    log.warning("could not announce this GPU worker on Redis: %s", exc)
                if self._stop_event.wait(self.interval):
                    break
        finally:
            try:
                redis.delete(key)
            except redis_lib.RedisError as exc:
                log.warning("could not withdraw this GPU worker's announcement from Redis "
                            "(%s); it expires within %.0f s", exc, self.interval * 3)
            redis.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
