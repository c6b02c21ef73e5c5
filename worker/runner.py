"""One delivery of a training job, independent of Celery (worker.tasks wraps it).

claim (or return) → load the spec and the data → resume from the checkpoint the job row
names, if any → `fit` with the callbacks of `job_callbacks` → write the weights → finish the
job. Every outcome ends in the database with a clear error type and message (never a stack
trace); every status change is published as a `status` event. While it trains, the job
has its own log (worker.job_log: start, device, data, epochs, warnings, how it ended).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis as redis_lib
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from messaging.live_events import clear_cancel_flag, publish_status, queued_key, redis_from_url
from store.artifacts import ArtifactError, ArtifactStore
from store.db import make_session_factory
from store.jobs import claim_job, finish_job, get_job
from store.models import TERMINAL, Dataset, Job, JobStatus, utcnow
from store.timefmt import as_utc

from .callbacks import (
    CheckpointWriter,
    EventPublisher,
    FindingWriter,
    JobLedger,
    MetricsRecorder,
    StopWatcher,
)
from .checkpoints import read_checkpoint
from .errors import CheckpointUnreadable, LeaseLost
from .job_log import JobLog, JobLogRecorder, LogLimits, error_lines, job_logger
from .lease import Heartbeat, TrialLease
from .memory_limit import job_memory_limit
from .settings import WorkerSettings

if TYPE_CHECKING:  # pragma: no cover
    from mlp_engine.callbacks import Callback
    from mlp_engine.spec import JobSpec

    from .pack_book import PackBook

__all__ = ["run_job", "job_callbacks", "WorkerContext", "classify_error", "claim",
           "conclude", "conclude_error", "decide_ending", "Ending", "log_training_starts",
           "use_device"]

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
    log_limits: LogLimits = field(default_factory=LogLimits)
    _sender: Any = None

    def sender(self) -> Any:
        """A Celery app that only sends (a deferred job's message), made on first use."""
        if self._sender is None:
            from messaging.celery_factory import make_celery

            assert self.settings.redis_url, "sending needs REDIS_URL"
            self._sender = make_celery(self.settings.redis_url,
                                       max_runtime_s=self.settings.max_runtime_s)
        return self._sender

    @classmethod
    def from_settings(cls, s: WorkerSettings) -> WorkerContext:
        threads = os.environ.get("MLP_TORCH_THREADS")
        return cls(
            settings=s,
            session_factory=make_session_factory(s.database_url),  # type: ignore[arg-type]
            redis=redis_from_url(s.redis_url) if s.redis_url else None,
            artifacts=ArtifactStore.from_settings(s),
            worker_id=make_worker_id(),
            num_threads=int(threads) if threads else s.torch_threads(),
            log_limits=LogLimits(max_lines=s.max_log_lines_per_job,
                                 max_chars=s.max_log_line_chars),
        )


# ---------------------------------------------------------------------------- the job


def run_job(job_id: str, ctx: WorkerContext) -> dict[str, Any]:
    """Run one delivery of a job; returns {"job_id", "status"} for the logs (and "packed":
    the other jobs trained with it, a sweep's trials of the same architecture)."""
    if ctx.redis is not None:
        # this message is being handled: recovery may queue the job again if we die
        # before claiming it
        try:
            ctx.redis.delete(queued_key(job_id))
        except redis_lib.RedisError as exc:
            log.warning("job %s: could not clear its queued marker on Redis (%s); the "
                        "reconciler may deliver it again, which the claim makes harmless",
                        job_id, exc)
    job, answer = claim(ctx, job_id)
    if job is None:
        return answer
    from .packs import pack_companions, run_pack

    companions = pack_companions(ctx, job)
    if companions:
        statuses = run_pack(ctx, [job, *companions])
        return {"job_id": job_id, "status": statuses[job_id],
                "packed": [c.id for c in companions]}
    heartbeat = Heartbeat(session_factory=ctx.session_factory, job_id=job_id,
                          worker_id=ctx.worker_id, lease_s=ctx.settings.lease_seconds,
                          interval_s=ctx.settings.heartbeat_interval())
    heartbeat.start()
    try:
        status = _train(job, ctx, heartbeat)
    finally:
        heartbeat.stop()
    return {"job_id": job_id, "status": status}


def claim(ctx: WorkerContext, job_id: str, *, companion: bool = False
          ) -> tuple[Job | None, dict[str, Any]]:
    """Claim the job for this worker: (the job, {}) or (None, what happened instead: it is
    gone, another worker's, ended, or deferred by its tenant's running limit). A
    `companion` (a trial a pack takes along, worker.packs) is never deferred: its own
    message is still on its way."""
    s = ctx.settings
    claimed_at = utcnow()
    with ctx.session_factory() as session:
        job = claim_job(session, job_id, worker_id=ctx.worker_id, lease_s=s.lease_seconds,
                        max_attempts=s.max_attempts,
                        max_running_per_tenant=s.max_running_jobs_per_tenant or None)
        if job is not None or companion:
            return job, {}
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
            if job is not None:
                return job, {}
            current = get_job(session, job_id)
    if current is None:
        log.warning("job %s does not exist (deleted?); nothing to do", job_id)
        return None, {"job_id": job_id, "status": "missing"}
    if current.status == JobStatus.QUEUED:
        # its tenant runs MLP_MAX_RUNNING_JOBS_PER_TENANT jobs already
        _defer(ctx, current)
        return None, {"job_id": job_id, "status": "deferred", "claimed": False}
    if current.status in TERMINAL and current.finished_at is not None and \
            as_utc(current.finished_at) >= claimed_at:
        _publish(ctx, current)  # the claim itself ended it (attempts, cancel)
    log.info("job %s is %s; not claimable by this delivery", job_id, current.status)
    return None, {"job_id": job_id, "status": current.status, "claimed": False}


DEFER_S = 1.0  # between two looks at a job whose tenant is at its running limit


def _defer(ctx: WorkerContext, job: Job) -> None:
    """Send the job's message again, at the last priority level, after a pause: other
    tenants' jobs go first, and a worker with nothing else to do does not spin."""
    from messaging.celery_factory import PRIORITY_LEVELS
    from messaging.queues import enqueue_job

    log.info("job %s waits: its tenant runs as many jobs as MLP_MAX_RUNNING_JOBS_PER_TENANT "
             "allows", job.id)
    time.sleep(DEFER_S)
    try:
        enqueue_job(ctx.sender(), job.id, job.queue or "cpu", redis=ctx.redis,
                    priority=PRIORITY_LEVELS - 1)
    except (redis_lib.RedisError, OSError) as exc:  # kombu raises OSError subclasses too
        log.warning("job %s: could not queue it again (%s); the reconciler will", job.id, exc)


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


def _set_device(ctx: WorkerContext, job_ids: list[str], device: str) -> list[Job]:
    """The jobs' device in their rows, in one UPDATE; the rows as they are now."""
    with ctx.session_factory() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(device=device)
                        .execution_options(synchronize_session=False))
        session.commit()
        return list(session.scalars(select(Job).where(Job.id.in_(job_ids))))


def _finish(ctx: WorkerContext, job_id: str, status: str, **kwargs: Any) -> str:
    with ctx.session_factory() as session:
        done = finish_job(session, job_id, status, worker_id=ctx.worker_id, **kwargs)
        job = get_job(session, job_id)
    if job is None:
        return "missing"
    if done:
        _publish(ctx, job)
        if status == JobStatus.CANCELLED and ctx.redis is not None:
            try:
                clear_cancel_flag(ctx.redis, job_id)
            except redis_lib.RedisError as exc:
                # the job is terminal, so the flag is never read again; it expires by itself
                log.warning("job %s: could not clear its cancel flag on Redis: %s", job_id, exc)
    return job.status


def _train(job: Job, ctx: WorkerContext, heartbeat: Heartbeat) -> str:
    # the job's own log (worker.job_log): what this attempt says about the job, kept in the
    # database and fenced by the lease like the metrics
    job_log = JobLog(job_id=job.id, session_factory=ctx.session_factory,
                     worker_id=ctx.worker_id, limits=ctx.log_limits)
    with job_log.attached():
        return _train_logged(job, ctx, heartbeat, job_log)


def _train_logged(job: Job, ctx: WorkerContext, heartbeat: Heartbeat, job_log: JobLog) -> str:
    from mlp_engine.spec import JobSpec

    job_id = job.id
    callbacks: list[Callback] = []
    _say_start(job)
    try:
        # the stored spec was resolved by the API; fit resolves it again against the data
        # with the same function (mlp_engine.spec.resolve_spec, through prepare_data)
        spec = JobSpec.model_validate(job.spec)
        device = _pick_device(spec.device)
        job_logger.info("device: %s", _describe_device(device, ctx.num_threads))
        use_device(ctx, [job_id], device)
        # the job's memory is bounded from its data on: a wrong estimate fails this job
        # (out_of_memory), never the host
        with job_memory_limit(ctx.settings.max_job_memory_bytes):
            x, y = _load_data(ctx, job)
            resume = _load_checkpoint(ctx, job)
            callbacks = job_callbacks(job, spec=spec, ctx=ctx, heartbeat=heartbeat,
                                      job_log=job_log)
            from mlp_engine.training import fit

            log_training_starts(ctx, job, resume)
            result = fit(spec, x, y, callbacks=callbacks, resume=resume, device=device,
                         num_threads=ctx.num_threads, limits=ctx.settings.limits())
            del x, y
        return conclude(ctx, job_id, spec, result, callbacks, job_log)
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; this attempt stops", job_id)
        return "lease_lost"  # its log lines are the next holder's to write, not ours
    except Exception as exc:  # every outcome must reach the database
        return conclude_error(ctx, job_id, exc, callbacks, job_log)
    # KeyboardInterrupt, SystemExit: the worker goes down; the lease expires and another
    # delivery resumes the job from its last checkpoint


def _say_start(job: Job) -> None:
    if job.checkpoint_uri:
        job_logger.info("start: attempt %s, resuming from the checkpoint of epoch %s of %s",
                        job.attempts, job.checkpoint_epoch, int(job.epochs or 0))
    else:
        job_logger.info("start: attempt %s, from epoch 0 of %s", job.attempts,
                        int(job.epochs or 0))


def use_device(ctx: WorkerContext, job_ids: list[str], device: str) -> None:
    """Where the jobs train (one job, or the trials of a pack), in their rows; then each
    one's status event, so that a follower sees it."""
    for job in _set_device(ctx, job_ids, device):
        _publish(ctx, job)


def log_training_starts(ctx: WorkerContext, job: Job, resume: dict[str, Any] | None,
                        note: str = "") -> None:
    # one line per training run: the fault tests count them (none may run twice)
    log.info("job %s: training starts (attempt %s, from epoch %s, worker %s)%s", job.id,
             job.attempts, int(resume["epoch"]) if resume else 0, ctx.worker_id, note)


@dataclass(frozen=True)
class Ending:
    """How a job whose training returned ends: its terminal status and what finish_job
    stores with it (weights, error, summary updates)."""

    status: str
    details: dict[str, Any]


def conclude(ctx: WorkerContext, job_id: str, spec: JobSpec, result: Any,
             callbacks: list[Callback], job_log: JobLog) -> str:
    """End a job whose training returned: its weights written, then succeeded, pruned (a
    sweep's early stopping) or failed by a rule of diagnostics.stop_on. The job's status."""
    ending = decide_ending(ctx, job_id, spec, result, callbacks)
    job_log.save()  # before the finish, while this worker still holds the job
    return _finish(ctx, job_id, ending.status, **ending.details)


def decide_ending(ctx: WorkerContext, job_id: str, spec: JobSpec, result: Any,
                  callbacks: list[Callback]) -> Ending:
    """`conclude` but the writes to the job row: the weights written, the ending said in
    the job's log (the calling context's), the status and details to finish with (the
    trials of a pack finish together: worker.packs)."""
    stopped_by = _rule_stop(callbacks)
    # a job a rule stopped keeps the weights of its last epoch (none before the first)
    weights = _write_weights(ctx, job_id, result) if result.history or \
        stopped_by is None else None
    updates: dict[str, Any] = {"stopped_early": bool(result.stopped_early)}
    if result.best_epoch is not None:
        updates["best_epoch"] = result.best_epoch
    if stopped_by is not None:
        _say_rule_stop(stopped_by)
        return Ending(JobStatus.FAILED, {"error": ("rule", str(stopped_by["message"])),
                                         "weights": weights, "summary_updates": updates})
    pruned = _pruned_by(callbacks)
    if pruned is not None:  # a sweep's early stopping (SPEC 9): metrics and weights kept
        job_logger.info("%s", pruned)
        return Ending(JobStatus.PRUNED, {"weights": weights, "summary_updates": updates})
    job_logger.info("succeeded after epoch %s of %s",
                    result.history[-1]["epoch"] if result.history else 0,
                    spec.training.epochs)
    return Ending(JobStatus.SUCCEEDED, {"weights": weights, "summary_updates": updates})


def conclude_error(ctx: WorkerContext, job_id: str, exc: Exception,
                   callbacks: list[Callback], job_log: JobLog) -> str:
    """End a job whose training raised: failed or cancelled, with a clear error type and
    message (never a stack trace). The job's status."""
    stopped_by = _rule_stop(callbacks)
    if stopped_by is not None and stopped_by["rule"] == "diverging":
        # stop_on diverging, and the loss went to NaN: the rule's end, not a crash
        return _finish_by_rule(ctx, job_log, stopped_by)
    status, error = classify_error(exc)
    if status == JobStatus.FAILED and error[0] == "internal_error":
        log.error("job %s failed", job_id, exc_info=exc)
    else:
        log.info("job %s: %s %s", job_id, status, error)
    if status == JobStatus.CANCELLED:
        job_logger.info("cancelled by request")
    else:
        for line in error_lines(exc, error, status=status):
            job_logger.error("%s", line)
    job_log.save()
    return _finish(ctx, job_id, status, error=None if status == JobStatus.CANCELLED else error)


def _finish_by_rule(ctx: WorkerContext, job_log: JobLog, finding: dict[str, Any],
                    **kwargs: Any) -> str:
    """End a job that a rule of diagnostics.stop_on stopped: failed, error type "rule"
    with the finding's message (SPEC 8)."""
    _say_rule_stop(finding)
    job_log.save()
    return _finish(ctx, job_log.job_id, JobStatus.FAILED,
                   error=("rule", str(finding["message"])), **kwargs)


def _say_rule_stop(finding: dict[str, Any]) -> None:
    when = (f"at epoch {finding['epoch']}" if finding.get("epoch") is not None
            else "before training")
    job_logger.error("stopped by rule %s (diagnostics.stop_on) %s: %s", finding["rule"], when,
                     finding["message"])


def _rule_stop(callbacks: list[Callback]) -> dict[str, Any] | None:
    """The finding of a rule of diagnostics.stop_on that ended training, if one did."""
    from mlp_engine.rule_monitor import RuleMonitor

    return next((cb.stopped_by for cb in callbacks if isinstance(cb, RuleMonitor)), None)


def _pruned_by(callbacks: list[Callback]) -> str | None:
    """Why a sweep's early stopping ended the trial, if it did."""
    from mlp_engine.sweep_pruning import TrialPruner

    return next((cb.reason for cb in callbacks
                 if isinstance(cb, TrialPruner) and cb.reason is not None), None)


def _describe_device(device: str, threads: int | None) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device}, {threads} torch threads" if threads else device


def job_callbacks(job: Job, *, spec: JobSpec, ctx: WorkerContext,
                  heartbeat: Heartbeat | TrialLease | None = None, job_log: JobLog | None = None,
                  book: PackBook | None = None) -> list[Callback]:
    """The callbacks one attempt of `job` hands to `fit`, in the order they run.

    The findings rules come first (mlp_engine.rule_monitor.RuleMonitor, writing through
    FindingWriter): they take the diagnostics only they asked for out of the record before
    anyone stores it.

    The order is the promise of SPEC 7: at an epoch's end its checkpoint, when one is due,
    is written and named in the job row (with the records up to it) before the epoch's
    metrics are recorded on their own or published; the stop check comes last, so an epoch
    that finished is kept even when training stops right after it. With `job_log`, the
    job's log says each epoch too (JobLogRecorder, before the stop check). A sweep's trial
    whose sweep has early stopping gets worker.sweeps.trial_pruner's TrialPruner, after
    the records are written and before the stop check. With `book`, a trial of a pack: the
    pack's book writes its records and log with the other trials' (worker.pack_book).
    """
    s = ctx.settings
    # records up to job.epoch are in the database already (an earlier attempt's)
    ledger = JobLedger(job_id=job.id, session_factory=ctx.session_factory,
                       worker_id=ctx.worker_id, recorded_through=job.epoch,
                       checkpoint=job.checkpoint_uri)
    if book is not None:
        book.join(ledger, job_log)
    from mlp_engine.rule_monitor import RuleMonitor

    monitor = RuleMonitor(
        sink=FindingWriter(job_id=job.id, session_factory=ctx.session_factory,
                           redis=ctx.redis, worker_id=ctx.worker_id,
                           log=job_log),
        known=list(job.findings or []))
    from .sweeps import trial_pruner

    pruner = trial_pruner(job, ctx=ctx, ledger=ledger)
    return [
        monitor,
        CheckpointWriter(ledger, artifacts=ctx.artifacts, attempt=job.attempts,
                         every=spec.training.checkpoint_every,
                         interval_s=s.checkpoint_interval_s),
        MetricsRecorder(ledger, flush_s=s.metrics_flush_s, book=book),
        EventPublisher(ctx.redis, job_id=job.id, after_epoch=job.epoch),
        *([JobLogRecorder(job_log, flush_s=s.metrics_flush_s, book=book)] if job_log else []),
        *([pruner] if pruner is not None else []),
        StopWatcher(ctx.redis, job_id=job.id, heartbeat=heartbeat, poll_s=s.cancel_poll_s),
    ]


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
    if isinstance(exc, CheckpointUnreadable):
        return JobStatus.FAILED, ("checkpoint_unreadable", str(exc))
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
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return JobStatus.FAILED, ("out_of_memory", "training needed more memory than the "
                                  "worker allows a job (MLP_MAX_JOB_MEMORY_BYTES); use a "
                                  "smaller model or batch_size")
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
        uri, fmt, target, sha = ds.uri, ds.format, list(ds.target), ds.sha256
    try:
        path = ctx.artifacts.local_path(uri, sha256=sha)
    except ArtifactError as exc:
        raise DataError(f"the file of dataset {dataset_ref} cannot be read from the "
                        f"artifact store: {exc}", field="dataset.id") from exc
    # the columns the upload read (describe() made its DatasetInfo from them), with their
    # names: the model card and the weights file name the features as the file did
    import pandas as pd

    data = read_table(path, format=fmt, target=target)
    y = (pd.Series(data.y, name=data.target_names[0]) if data.y.ndim == 1
         else pd.DataFrame(data.y, columns=data.target_names))
    return pd.DataFrame(data.x, columns=data.feature_names, copy=False), y


def _load_checkpoint(ctx: WorkerContext, job: Job) -> dict[str, Any] | None:
    """The checkpoint the job row names, or None for a job that has none yet. One that
    cannot be read fails the job (CheckpointUnreadable): starting over from epoch 0 would
    hide the loss of every epoch it held."""
    if not job.checkpoint_uri:
        return None
    checkpoint = read_checkpoint(ctx.artifacts, job.checkpoint_uri)
    log.info("job %s: resuming from the checkpoint of epoch %s (attempt %s)",
             job.id, job.checkpoint_epoch, job.attempts)
    return checkpoint


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
