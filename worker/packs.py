"""Packed trials (SPEC 9): a sweep's trials that share an architecture and batch size are
trained together, as one batched model in one training process (mlp_engine.packed).

The worker that takes a trial's message looks for the sweep's other queued trials with the
same pack key (`pack_companions`) and claims them too, up to MLP_PACK_MAX_TRIALS in all;
their own messages, delivered later to any worker, then find them taken (or ended) and do
nothing. `run_pack` trains them with `fit_packed`, each trial with everything a lone job
has: its lease and heartbeat, its callbacks (checkpoints, records, events, findings, early
stopping, cancel), its log, its weights and its end, each decided alone (one trial pruned,
cancelled or diverged leaves the pack; the others go on). A pack that dies is recovered
trial by trial, as lone jobs are: each resumes alone from its own last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from messaging.live_events import publish_status
from mlp_engine.errors import NotPackable, SpecError
from store.jobs import claim_queued, finish_job
from store.locks import hold_jobs
from store.logs import add_log_lines
from store.models import Job, JobStatus

from .errors import LeaseLost
from .job_log import JobLog
from .lease import PackHeartbeat, TrialLease
from .memory_limit import job_memory_limit
from .pack_book import PackBook
from .runner import (
    Ending,
    _load_checkpoint,
    _load_data,
    _pick_device,
    _say_start,
    claim,
    conclude_error,
    decide_ending,
    job_callbacks,
    log_training_starts,
    use_device,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlp_engine.callbacks import Callback
    from mlp_engine.spec import JobSpec

    from .runner import WorkerContext

__all__ = ["pack_companions", "run_pack"]

log = logging.getLogger(__name__)

# queued trials looked at per pack, beyond the ones it can take (those of another key)
_LOOK_AHEAD = 4


def _key(spec_data: dict[str, Any]) -> str | None:
    """The trial's pack key, or None when it is not packed (batch norm, CUDA, a spec that
    does not validate: it trains alone and fails there, as it would)."""
    from mlp_engine.packed import pack_key
    from mlp_engine.spec import JobSpec

    try:
        spec = JobSpec.model_validate(spec_data)
        if _pick_device(spec.device) != "cpu":
            return None
        return pack_key(spec)
    except (NotPackable, SpecError, ValidationError):
        return None


def pack_companions(ctx: WorkerContext, job: Job) -> list[Job]:
    """The sweep's queued trials that can train with `job` (claimed for this worker now),
    up to MLP_PACK_MAX_TRIALS with it; none for a job that is no sweep's trial or is not
    packed."""
    limit = ctx.settings.pack_max_trials
    if limit < 2 or not job.sweep_id:
        return []
    key = _key(job.spec)
    if key is None:
        return []
    with ctx.session_factory() as session:
        queued = list(session.scalars(
            select(Job).where(Job.sweep_id == job.sweep_id, Job.status == JobStatus.QUEUED,
                              Job.id != job.id)
            .order_by(Job.trial).limit((limit - 1) * _LOOK_AHEAD)))
        candidates = [j.id for j in queued if _key(j.spec) == key]
    s = ctx.settings
    if not s.max_running_jobs_per_tenant:  # in one UPDATE
        with ctx.session_factory() as session:
            return claim_queued(session, candidates[:limit - 1], worker_id=ctx.worker_id,
                                lease_s=s.lease_seconds, max_attempts=s.max_attempts)
    taken: list[Job] = []
    for job_id in candidates[:limit - 1]:  # each claim counts its tenant's running jobs
        companion, _ = claim(ctx, job_id, companion=True)
        if companion is not None:  # else another worker took it, or it was cancelled
            taken.append(companion)
    return taken


def run_pack(ctx: WorkerContext, jobs: list[Job]) -> dict[str, str]:
    """Train the claimed trials `jobs` together; each one's status, by job id."""
    s = ctx.settings
    heartbeat = PackHeartbeat(session_factory=ctx.session_factory, job_ids=[j.id for j in jobs],
                              worker_id=ctx.worker_id, lease_s=s.lease_seconds,
                              interval_s=s.heartbeat_interval())
    logs = [JobLog(job_id=j.id, session_factory=ctx.session_factory,
                   worker_id=ctx.worker_id, limits=ctx.log_limits) for j in jobs]
    heartbeat.start()
    try:
        with contextlib.ExitStack() as attached:
            for job_log in logs:  # each listens; each trial's lines are said in its own
                attached.enter_context(job_log.attached(current=False))
            return _train_pack(ctx, jobs, [heartbeat.leases[j.id] for j in jobs], logs)
    finally:
        heartbeat.stop()


def _train_pack(ctx: WorkerContext, jobs: list[Job], leases: list[TrialLease],
                logs: list[JobLog]) -> dict[str, str]:
    from mlp_engine.packed import fit_packed
    from mlp_engine.spec import JobSpec

    sweep_id = jobs[0].sweep_id
    statuses: dict[str, str] = {}
    live: list[tuple[Job, JobSpec, JobLog, TrialLease]] = []
    for job, job_log, lease in zip(jobs, logs, leases, strict=True):
        with job_log.speaking():
            _say_start(job)
            try:
                spec = JobSpec.model_validate(job.spec)
                job_log.info("device: cpu, %s torch threads, packed with %s other trials of "
                             "sweep %s", ctx.num_threads, len(jobs) - 1, sweep_id)
            except Exception as exc:  # noqa: BLE001 - this trial's own: it ends alone
                statuses[job.id] = conclude_error(ctx, job.id, exc, [], job_log)
                continue
        live.append((job, spec, job_log, lease))
    use_device(ctx, [job.id for job, *_ in live], "cpu")
    callbacks: dict[str, list[Callback]] = {}
    resumes: dict[str, dict[str, Any] | None] = {}
    book = PackBook(ctx.session_factory, worker_id=ctx.worker_id, limits=ctx.log_limits,
                    flush_s=ctx.settings.metrics_flush_s)
    try:
        with job_memory_limit(ctx.settings.max_job_memory_bytes):
            x, y = _load_data(ctx, live[0][0]) if live else (None, None)
            for job, spec, job_log, lease in live:
                with job_log.speaking():
                    try:
                        resumes[job.id] = _load_checkpoint(ctx, job)
                    except Exception as exc:  # noqa: BLE001 - its checkpoint: it ends alone
                        statuses[job.id] = conclude_error(ctx, job.id, exc, [], job_log)
                        continue
                callbacks[job.id] = job_callbacks(job, spec=spec, ctx=ctx,
                                                  heartbeat=lease, job_log=job_log,
                                                  book=book)
            live = [t for t in live if t[0].id in callbacks]
            for job, *_ in live:
                log_training_starts(ctx, job, resumes[job.id],
                                    note=f", packed with {len(live) - 1} other trials of "
                                         f"sweep {sweep_id}")
            outcomes = fit_packed([spec for _, spec, _, _ in live], x, y,
                                  callbacks=[callbacks[j.id] for j, *_ in live],
                                  resume=[resumes[j.id] for j, *_ in live], device="cpu",
                                  num_threads=ctx.num_threads, limits=ctx.settings.limits())
            del x, y
        book.flush()  # every trial's last records and lines, before any trial ends
    except Exception as exc:  # noqa: BLE001 - no trial's own (the data, memory): it ends all
        with contextlib.suppress(SQLAlchemyError):  # what the trials did is kept if it can be
            book.flush()
        for job, _, job_log, _ in live:
            if job.id not in statuses:
                with job_log.speaking():
                    statuses[job.id] = conclude_error(ctx, job.id, exc,
                                                      callbacks.get(job.id, []), job_log)
        return statuses
    endings: list[tuple[Job, JobLog, Ending]] = []
    for (job, spec, job_log, _), outcome in zip(live, outcomes, strict=True):
        cbs = callbacks[job.id]
        with job_log.speaking():
            try:
                endings.append((job, job_log, decide_ending(ctx, job.id, spec,
                                                            outcome.unwrap(), cbs)))
            except LeaseLost:
                log.warning("job %s: lease lost to another worker; this attempt stops",
                            job.id)
                statuses[job.id] = "lease_lost"
            except Exception as exc:  # noqa: BLE001 - every outcome must reach the database
                statuses[job.id] = conclude_error(ctx, job.id, exc, cbs, job_log)
    statuses.update(_finish_together(ctx, endings))
    return statuses


def _finish_together(ctx: WorkerContext, endings: list[tuple[Job, JobLog, Ending]]
                     ) -> dict[str, str]:
    """What `conclude` writes for one job in two transactions (its last log lines, then its
    end), for every trial that ended in one: fenced by the lease as each lone write is (a
    trial another worker holds gets neither). Then each end's status event. The trials'
    statuses, by job id."""
    if not endings:
        return {}
    taken = [(job, job_log, [] if job_log.lease_lost else job_log.take(), ending)
             for job, job_log, ending in endings]
    limits = ctx.log_limits
    try:
        with ctx.session_factory() as session:
            held = hold_jobs(session, [job.id for job, *_ in taken], ctx.worker_id)
            lasts = {job.id: add_log_lines(session, job.id, lines, max_lines=limits.max_lines,
                                           max_chars=limits.max_chars)
                     for job, _, lines, _ in taken if lines and job.id in held}
            done = set()
            for job, _, _, ending in taken:
                if job.id in held and finish_job(session, job.id, ending.status,
                                                 worker_id=ctx.worker_id, commit=False,
                                                 **ending.details):
                    done.add(job.id)
            session.commit()
            rows = {row.id: row for row in session.scalars(
                select(Job).where(Job.id.in_([j.id for j, *_ in taken])))}
    except SQLAlchemyError as exc:
        for _, job_log, lines, _ in taken:
            if lines:
                job_log.put_back(lines, exc)
        raise
    for job, job_log, lines, _ in taken:
        if lines:
            job_log.saved(lasts.get(job.id))
    if ctx.redis is not None:
        for job_id in done:
            publish_status(ctx.redis, rows[job_id])
    return {job.id: str(rows[job.id].status) if job.id in rows else "missing"
            for job, *_ in taken}
