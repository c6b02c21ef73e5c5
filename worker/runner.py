"""One delivery of a training job, independent of Celery (worker.tasks wraps it).

claim (or return) → load the spec and the data → resume from the last checkpoint if there
is one → `fit` with the JobReporter callback → write the weights → finish the job. Every
outcome ends in the database with a clear error type and message (never a stack trace);
every status change is published as a `status` event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_lib
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy.orm import Session

from messaging.live_events import clear_cancel_flag, publish_status, queued_key, redis_from_url
from store.artifacts import ArtifactError, ArtifactStore
from store.db import make_session_factory
from store.jobs import as_utc, claim_job, finish_job, get_job
from store.models import TERMINAL, Dataset, Job, JobStatus, utcnow

from .callbacks import Heartbeat, JobReporter, LeaseLost
from .settings import WorkerSettings

__all__ = ["run_job", "WorkerContext", "classify_error"]

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What one training process needs, created once per process (after the fork)."""

    settings: WorkerSettings
    session_factory: Callable[[], Session]
    redis: redis_lib.Redis | None
    artifacts: ArtifactStore
    worker_id: str
    num_threads: int | None = None

    @classmethod
    def from_settings(cls, s: WorkerSettings) -> WorkerContext:
        threads = os.environ.get("MLP_TORCH_THREADS")
        return cls(
            settings=s,
            session_factory=make_session_factory(s.database_url),  # type: ignore[arg-type]
            redis=redis_from_url(s.redis_url) if s.redis_url else None,
            artifacts=ArtifactStore(s.artifacts_url),  # type: ignore[arg-type]
            worker_id=make_worker_id(),
            num_threads=int(threads) if threads else s.torch_threads(),
        )


# ---------------------------------------------------------------------------- the job


def run_job(job_id: str, ctx: WorkerContext) -> dict[str, Any]:
    """Run one delivery of a job; returns {"job_id", "status"} for the logs."""
    s = ctx.settings
    if ctx.redis is not None:
        # this message is being handled: recovery may queue the job again if we die
        # before claiming it
        with contextlib.suppress(redis_lib.RedisError):
            ctx.redis.delete(queued_key(job_id))
    claimed_at = utcnow()
    with ctx.session_factory() as session:
        job = claim_job(session, job_id, worker_id=ctx.worker_id, lease_s=s.lease_seconds,
                        max_attempts=s.max_attempts)
        if job is None:
            current = get_job(session, job_id)
            if current is not None and current.status == JobStatus.RUNNING and \
                    worker_is_dead(current.worker_id):
                # a redelivery after our own host's training process was killed: no need
                # to wait for its lease to run out
                log.info("job %s: its worker %s is gone; taking over", job_id,
                         current.worker_id)
                job = claim_job(session, job_id, worker_id=ctx.worker_id,
                                lease_s=s.lease_seconds, max_attempts=s.max_attempts,
                                take_over_from=current.worker_id)
                current = get_job(session, job_id)
        if job is None:
            if current is None:
                log.warning("job %s does not exist (deleted?); nothing to do", job_id)
                return {"job_id": job_id, "status": "missing"}
            if current.status in TERMINAL and current.finished_at is not None and \
                    as_utc(current.finished_at) >= claimed_at:
                _publish(ctx, current)  # the claim itself ended it (attempts, cancel)
            log.info("job %s is %s; not claimable by this delivery", job_id, current.status)
            return {"job_id": job_id, "status": current.status, "claimed": False}

    heartbeat = Heartbeat(session_factory=ctx.session_factory, job_id=job_id,
                          worker_id=ctx.worker_id, lease_s=s.lease_seconds,
                          interval_s=s.heartbeat_interval())
    heartbeat.start()
    try:
        status = _train(job, ctx, heartbeat)
    finally:
        heartbeat.stop()
    return {"job_id": job_id, "status": status}


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def worker_is_dead(worker_id: str | None) -> bool:
    """Whether a worker id names a process on this host that no longer exists. Only ever
    True when sure: another host's worker, or a pid that is alive (or reused), is not."""
    if not worker_id:
        return False
    parts = worker_id.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _publish(ctx: WorkerContext, job: Job) -> None:
    if ctx.redis is not None:
        publish_status(ctx.redis, job)


def _set_device(ctx: WorkerContext, job_id: str, device: str) -> Job | None:
    with ctx.session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        job.device = device
        session.commit()
        return job


def _finish(ctx: WorkerContext, job_id: str, status: str, **kwargs: Any) -> str:
    with ctx.session_factory() as session:
        done = finish_job(session, job_id, status, worker_id=ctx.worker_id, **kwargs)
        job = get_job(session, job_id)
    if job is None:
        return "missing"
    if done:
        _publish(ctx, job)
        if status == JobStatus.CANCELLED and ctx.redis is not None:
            with contextlib.suppress(redis_lib.RedisError):
                clear_cancel_flag(ctx.redis, job_id)
    return job.status


def _train(job: Job, ctx: WorkerContext, heartbeat: Heartbeat) -> str:
    from mlp_engine.spec import JobSpec

    job_id = job.id
    try:
        spec = JobSpec.model_validate(job.spec)
        device = _pick_device(spec.device)
        current = _set_device(ctx, job_id, device)
        if current is not None:
            _publish(ctx, current)
        x, y = _load_data(ctx, job)
        resume = _load_checkpoint(ctx, job)
        _test_poison_hook(job)
        reporter = JobReporter(
            job_id=job_id, session_factory=ctx.session_factory, redis=ctx.redis,
            artifacts=ctx.artifacts, heartbeat=heartbeat,
            checkpoint_every=spec.training.checkpoint_every,
            checkpoint_interval_s=ctx.settings.checkpoint_interval_s,
            flush_s=ctx.settings.metrics_flush_s, cancel_poll_s=ctx.settings.cancel_poll_s,
            recorded_epoch=job.epoch, worker_id=ctx.worker_id, attempt=job.attempts,
            resumed_checkpoint=job.checkpoint_uri,
        )
        from mlp_engine.training import fit

        # one line per training run: the fault tests count them (none may run twice)
        log.info("job %s: training starts (attempt %s, from epoch %s, worker %s)", job_id,
                 job.attempts, int(resume["epoch"]) if resume else 0, ctx.worker_id)
        result = fit(spec, x, y, callbacks=[reporter], resume=resume, device=device,
                     num_threads=ctx.num_threads, limits=ctx.settings.limits())
        weights = _write_weights(ctx, job_id, result)
        updates: dict[str, Any] = {"stopped_early": bool(result.stopped_early)}
        if result.best_epoch is not None:
            updates["best_epoch"] = result.best_epoch
        return _finish(ctx, job_id, JobStatus.SUCCEEDED, weights=weights,
                       summary_updates=updates)
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; this attempt stops", job_id)
        return "lease_lost"
    except Exception as exc:  # every outcome must reach the database
        status, error = classify_error(exc)
        if status == JobStatus.FAILED and error[0] == "internal_error":
            log.exception("job %s failed", job_id)
        else:
            log.info("job %s: %s %s", job_id, status, error)
        return _finish(ctx, job_id, status,
                       error=None if status == JobStatus.CANCELLED else error)
    # KeyboardInterrupt, SystemExit: the worker goes down; the lease expires and another
    # delivery resumes the job from its last checkpoint


# A test hook, off unless the variable is set: the training process of a job whose name it
# lists kills itself with SIGKILL, as a job that always crashes its worker would (a "poison"
# job). tests/faults uses it to check such a job fails after MLP_MAX_ATTEMPTS.
TEST_POISON_ENV = "MLP_TEST_POISON_JOB_NAMES"


def _test_poison_hook(job: Job) -> None:
    names = os.environ.get(TEST_POISON_ENV)
    if names and job.name and job.name in {n.strip() for n in names.split(",")}:
        log.warning("job %s: named in %s (a test hook); this process kills itself",
                    job.id, TEST_POISON_ENV)
        os.kill(os.getpid(), signal.SIGKILL)


def classify_error(exc: BaseException) -> tuple[str, tuple[str, str]]:
    """(status, (error type, message)) for whatever ended a job: a message for a person,
    never a stack trace."""
    from mlp_engine.errors import (
        Cancelled,
        DataError,
        DivergedError,
        SpecError,
        TimeLimitExceeded,
        TrainingError,
        WeightsError,
    )

    if isinstance(exc, Cancelled):
        return JobStatus.CANCELLED, ("cancelled", "cancelled by request")
    if isinstance(exc, TimeLimitExceeded):
        return JobStatus.FAILED, ("time_limit", str(exc))
    if isinstance(exc, SoftTimeLimitExceeded):
        return JobStatus.FAILED, ("time_limit", "exceeded the worker's time limit "
                                  "(MLP_MAX_RUNTIME_S plus a margin)")
    if isinstance(exc, DivergedError):
        return JobStatus.FAILED, ("diverged", str(exc))
    if isinstance(exc, ValidationError):  # a stored spec this engine version refuses
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "")).removeprefix("Value error, ")
        return JobStatus.FAILED, ("invalid_spec", f"{where}: {message}" if where else message)
    if isinstance(exc, SpecError):
        field = f"{exc.field}: " if getattr(exc, "field", None) else ""
        return JobStatus.FAILED, ("invalid_spec", f"{field}{exc.message}")
    if isinstance(exc, DataError):
        return JobStatus.FAILED, ("invalid_data", exc.message)
    if isinstance(exc, ArtifactError):
        return JobStatus.FAILED, ("artifact_error", str(exc))
    if isinstance(exc, (TrainingError, WeightsError)):
        return JobStatus.FAILED, ("training_error", str(exc))
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return JobStatus.FAILED, ("out_of_memory", "training ran out of memory; use a smaller "
                                  "model or batch_size")
    first_line = (str(exc).strip().splitlines() or [""])[0].split("Traceback")[0]
    first_line = first_line.strip()[:300]
    message = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return JobStatus.FAILED, ("internal_error", f"the worker failed unexpectedly ({message})")


def _pick_device(asked: str) -> str:
    import torch

    if asked == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return f"cuda:{_gpu_index()}"
    if asked == "cuda":
        from mlp_engine.errors import TrainingError

        raise TrainingError("the job asks for device 'cuda' but this worker has no GPU")
    return "cpu"


def _gpu_index() -> int:
    """Spread a worker's processes over the machine's GPUs (one job per GPU at a time
    when the concurrency equals the GPU count)."""
    import torch

    count = max(1, torch.cuda.device_count())
    try:
        from billiard.process import current_process

        index = current_process().index or 0
    except (ImportError, AttributeError):
        index = 0
    return int(index) % count


def _load_data(ctx: WorkerContext, job: Job) -> tuple[Any, Any]:
    """Builtin and inline data are fit's to load; an uploaded dataset is read here."""
    dataset_ref = (job.spec.get("dataset") or {}).get("id") or job.dataset_id
    if not dataset_ref:
        return None, None
    from mlp_engine.data import read_table
    from mlp_engine.errors import DataError

    with ctx.session_factory() as session:
        ds = session.get(Dataset, dataset_ref)
        if ds is None or ds.tenant_id != job.tenant_id:
            raise DataError(f"dataset {dataset_ref} no longer exists", field="dataset.id")
        uri, fmt, target, multilabel = ds.uri, ds.format, list(ds.target), ds.multilabel
    try:
        path = ctx.artifacts.local_path(uri)
    except ArtifactError as exc:
        raise DataError(f"the file of dataset {dataset_ref} is missing from the artifact "
                        "store", field="dataset.id") from exc
    columns: str | list[str] = target if multilabel or len(target) != 1 else target[0]
    data = read_table(path, format=fmt, target=columns)
    return data.x, data.y


def _load_checkpoint(ctx: WorkerContext, job: Job) -> dict[str, Any] | None:
    if not job.checkpoint_uri:
        return None
    import io

    import torch

    try:
        blob = ctx.artifacts.get_bytes(job.checkpoint_uri)
        ckpt = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # a checkpoint we cannot read: start over, lose no correctness
        log.warning("job %s: cannot read checkpoint %s (%s); starting from epoch 0",
                    job.id, job.checkpoint_uri, exc)
        return None
    log.info("job %s: resuming from the checkpoint of epoch %s (attempt %s)",
             job.id, job.checkpoint_epoch, job.attempts)
    return ckpt


def _write_weights(ctx: WorkerContext, job_id: str, result: Any) -> dict[str, Any]:
    from mlp_engine.weights import export_state_dict, save_model

    with tempfile.TemporaryDirectory(prefix="mlp-weights-") as tmp:
        st = save_model(Path(tmp) / "weights.safetensors", result)
        pt = export_state_dict(Path(tmp) / "weights.pt", result.model)
        st_key, pt_key = f"jobs/{job_id}/weights.safetensors", f"jobs/{job_id}/weights.pt"
        n, digest = ctx.artifacts.put_file(st_key, st)
        n_pt, digest_pt = ctx.artifacts.put_file(pt_key, pt)
    return {"uri": st_key, "bytes": n, "sha256": digest,
            "pt_uri": pt_key, "pt_bytes": n_pt, "pt_sha256": digest_pt}
