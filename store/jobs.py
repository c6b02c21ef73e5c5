"""The job repository: every read and state change of a job, shared by the API and the worker.

State changes that race (claiming a job, renewing its lease, cancelling, finishing) are
single conditional UPDATEs, so two processes can never both win. Each function commits.
A transition that changed the row also writes, in its transaction, the webhook deliveries
of the event it fires (store.webhooks.record_job_event: the outbox).

    queued ──claim──> running ──finish──> succeeded | failed
       │                 │ ──request_cancel──> cancelling ──worker stops──> cancelled
       └──request_cancel──> cancelled
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from mlp_engine.metric_table import METRICS, is_better

from .errors import ActiveJobsLimit, DatasetGone, JobStateError
from .idempotency import replayed
from .locks import held_by, hold_job, lock_row
from .models import ACTIVE, TERMINAL, Dataset, Job, JobMetric, JobStatus, Tenant, new_id, utcnow
from .paging import keyset_page
from .webhooks import record_job_event

__all__ = [
    "create_job",
    "get_job",
    "get_job_for_tenant",
    "could_be_id",
    "jobs_ahead",
    "list_jobs",
    "claim_job",
    "claim_queued",
    "renew_leases",
    "renew_lease",
    "record_epochs",
    "add_epochs",
    "get_metrics",
    "finish_job",
    "request_cancel",
    "delete_job",
    "count_by_status",
    "mark_enqueued",
    "summarize",
    "json_safe",
]



# --------------------------------------------------------------------------- time and JSON


def json_safe(value: Any) -> Any:
    """Plain JSON values: NumPy/torch scalars to Python numbers, NaN and inf to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return json_safe(tolist())
    return str(value)


# --------------------------------------------------------------------------- create / read


def create_job(
    session: Session,
    *,
    tenant_id: str,
    spec: dict[str, Any],
    name: str | None = None,
    dataset_id: str | None = None,
    device: str = "auto",
    queue: str = "cpu",
    parameter_count: int = 0,
    epochs: int | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    max_active: int | None = None,
    findings: list[dict[str, Any]] | None = None,
    sweep_id: str | None = None,
    trial: int | None = None,
    trial_values: dict[str, Any] | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job; return (job, created).

    With an `idempotency_key`, a repeat with the same `request_hash` returns the existing
    job and created=False; the same key with another hash raises IdempotencyConflict.
    The checks that concurrent requests could race are made in the inserting transaction,
    after the insert: at most `max_active` queued and running jobs for the tenant
    (ActiveJobsLimit), and the dataset still there (DatasetGone; see store.datasets).
    A sweep's trial (store.sweeps) has `sweep_id`, `trial` and `trial_values`; a second
    job with the same (sweep_id, trial) raises IntegrityError.
    """
    existing = replayed(session, Job, tenant_id=tenant_id, key=idempotency_key,
                        request_hash=request_hash)
    if existing is not None:
        return existing, False
    if epochs is None:
        epochs = int((spec.get("training") or {}).get("epochs") or 0)
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        name=name if name is not None else spec.get("name"),
        status=JobStatus.QUEUED,
        spec=spec,
        dataset_id=dataset_id,
        device=device,
        queue=queue,
        parameter_count=parameter_count,
        epochs=epochs,
        epoch=0,
        attempts=0,
        created_at=now,
        updated_at=now,
        enqueued_at=now,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        findings=json_safe(findings or []),
        sweep_id=sweep_id,
        trial=trial,
        trial_values=json_safe(trial_values) if trial_values is not None else None,
    )
    try:
        _insert_checked(session, job, max_active=max_active)
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = replayed(session, Job, tenant_id=tenant_id, key=idempotency_key,
                            request_hash=request_hash)
        if existing is None:
            raise
        return existing, False
    return job, True


def _insert_checked(session: Session, job: Job, *, max_active: int | None) -> None:
    """Insert and commit `job`, or roll back and raise. Locking the tenant's row (and the
    dataset's) serialises the checks on PostgreSQL; on SQLite the insert itself takes the
    one write lock, so the counts read after it include every other committed insert."""
    lock_row(session, Tenant, job.tenant_id)
    session.add(job)
    session.flush()
    try:
        if max_active is not None:
            active = session.scalar(select(func.count()).select_from(Job).where(
                Job.tenant_id == job.tenant_id, Job.status.in_(ACTIVE))) or 0
            if active > max_active:
                raise ActiveJobsLimit(
                    f"{active - 1} jobs are queued or running for this API key, the limit "
                    f"max_active_jobs_per_tenant={max_active} "
                    "(MLP_MAX_ACTIVE_JOBS_PER_TENANT); wait for some to finish or cancel "
                    "them")
        if job.dataset_id is not None and not lock_row(session, Dataset, job.dataset_id):
            raise DatasetGone(f"dataset {job.dataset_id} was deleted while this job was being "
                              "created; upload it again")
        record_job_event(session, job.id, JobStatus.QUEUED)  # the outbox: same transaction
    except BaseException:
        session.rollback()
        raise
    session.commit()


def jobs_ahead(session: Session, job: Job) -> int:
    """How many of the same tenant's jobs, queued or running, were created before this one
    (its place in its tenant's line; messaging.queues.fair_priority makes it a priority)."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == job.tenant_id, Job.status.in_(ACTIVE), Job.id != job.id,
        or_(Job.created_at < job.created_at,
            and_(Job.created_at == job.created_at, Job.id < job.id)))) or 0


def could_be_id(value: str) -> bool:
    """Whether a string could be one of our ids (`new_id`): anything else is not found,
    without asking the database (PostgreSQL refuses a NUL character with an error)."""
    return 0 < len(value) <= 64 and value.isascii() and value.isprintable()


def get_job(session: Session, job_id: str, *, fresh: bool = True) -> Job | None:
    if not could_be_id(job_id):
        return None
    return session.get(Job, job_id, populate_existing=fresh)


def get_job_for_tenant(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """The job if it exists and belongs to the tenant, else None (the API answers 404)."""
    if not could_be_id(job_id):
        return None
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.tenant_id != tenant_id:
        return None
    return job


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    status: str | Sequence[str] | None = None,
    name: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    sweep_id: str | None = None,
) -> tuple[list[Job], str | None]:
    """A page of the tenant's jobs, newest first, and the cursor of the next page;
    `sweep_id`: only that sweep's trials."""
    if name is not None and "\x00" in name:
        return [], None  # no name holds a NUL (and PostgreSQL refuses to compare one)
    q = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        statuses = [status] if isinstance(status, str) else list(status)
        q = q.where(Job.status.in_(statuses))
    if name is not None:
        q = q.where(Job.name == name)
    if sweep_id is not None:
        if not could_be_id(sweep_id):
            return [], None
        q = q.where(Job.sweep_id == sweep_id)
    return keyset_page(session, q, Job, limit=limit, cursor=cursor)


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    counts = {s: 0 for s in (*ACTIVE, *TERMINAL)}
    counts.update({status: n for status, n in rows})
    return counts


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    session.commit()


# --------------------------------------------------------------------------- the lease


def _claimable(now: datetime) -> Any:
    return or_(
        Job.status == JobStatus.QUEUED,
        and_(Job.status == JobStatus.RUNNING,
             or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)),
    )


def claim_job(
    session: Session,
    job_id: str,
    *,
    worker_id: str,
    lease_s: float,
    max_attempts: int = 3,
    take_over_from: str | None = None,
    max_running_per_tenant: int | None = None,
    now: datetime | None = None,
) -> Job | None:
    """Take the job for this worker, in one conditional UPDATE; None when not claimable.

    Claimable: queued, or running with an expired lease (its worker died; the new attempt
    resumes from the last checkpoint), or running under `take_over_from` (a worker known to
    be dead). Each claim counts an attempt; a job that would need more than `max_attempts`
    fails instead. A job with a live lease, a terminal job and a cancelling or cancelled job
    answer None. With `max_running_per_tenant`, a queued job stays queued (None) while its
    tenant has that many jobs running: the count is part of the UPDATE, under the tenant's
    row lock, so concurrent claims cannot pass it.
    """
    now = now or utcnow()
    claimable = _claimable(now)
    if take_over_from is not None:
        claimable = or_(claimable, and_(Job.status == JobStatus.RUNNING,
                                        Job.worker_id == take_over_from))
    if max_running_per_tenant is not None:
        tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
        if tenant_id is not None:
            lock_row(session, Tenant, tenant_id)
            others = aliased(Job)
            running = select(func.count()).select_from(others).where(
                others.tenant_id == tenant_id,
                others.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING))
            ).scalar_subquery()
            claimable = and_(claimable, or_(Job.status != JobStatus.QUEUED,
                                            running < max_running_per_tenant))
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.attempts < max_attempts)
        .values(status=JobStatus.RUNNING, worker_id=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_s),
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now), updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed == 1:
        record_job_event(session, job_id, JobStatus.RUNNING)
    session.commit()
    if claimed == 1:
        return session.get(Job, job_id, populate_existing=True)

    # not ours: out of attempts, or a cancel whose worker died, or simply not claimable
    gave_up = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.attempts >= max_attempts)
        .values(status=JobStatus.FAILED, error_type="max_attempts",
                error_message=(f"the job was started {max_attempts} times without finishing "
                               "(its worker was lost each time); gave up after "
                               f"MLP_MAX_ATTEMPTS={max_attempts}"),
                finished_at=now, updated_at=now, worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)).rowcount
    if gave_up == 1:
        record_job_event(session, job_id, JobStatus.FAILED)
    stopped = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.CANCELLING,
               or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
        .values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now,
                worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)).rowcount
    if stopped == 1:
        record_job_event(session, job_id, JobStatus.CANCELLED)
    session.commit()
    return None


def claim_queued(session: Session, job_ids: Sequence[str], *, worker_id: str, lease_s: float,
                 max_attempts: int = 3, now: datetime | None = None) -> list[Job]:
    """`claim_job` for jobs that are queued (the trials a pack takes along, worker.packs),
    in one conditional UPDATE: those still queued, in the order given. One that is not
    (taken, cancelled, out of attempts) is left as it is, for its own message. Without a
    per-tenant running limit only (that needs claim_job's count, one job at a time)."""
    if not job_ids:
        return []
    now = now or utcnow()
    claimed = set(session.scalars(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.QUEUED,
               Job.attempts < max_attempts)
        .values(status=JobStatus.RUNNING, worker_id=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_s),
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now), updated_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)))
    for job_id in job_ids:
        if job_id in claimed:
            record_job_event(session, job_id, JobStatus.RUNNING)
    session.commit()
    rows = {job.id: job for job in session.scalars(
        select(Job).where(Job.id.in_(claimed)).execution_options(populate_existing=True))}
    return [rows[job_id] for job_id in job_ids if job_id in rows]


def renew_lease(
    session: Session,
    job_id: str,
    *,
    worker_id: str,
    lease_s: float,
    now: datetime | None = None,
) -> str | None:
    """Extend this worker's lease; return the job's status (the worker stops on
    "cancelling"), or None when the worker no longer holds the job."""
    now = now or utcnow()
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, held_by(worker_id))
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    if renewed != 1:
        return None
    return session.scalar(select(Job.status).where(Job.id == job_id))


def renew_leases(session: Session, job_ids: Sequence[str], *, worker_id: str, lease_s: float,
                 now: datetime | None = None) -> dict[str, str]:
    """`renew_lease` for several jobs of this worker (a pack's trials) in one UPDATE: the
    status of each job whose lease was extended; a job missing from the answer is no longer
    this worker's."""
    if not job_ids:
        return {}
    now = now or utcnow()
    renewed = dict(session.execute(
        update(Job)
        .where(Job.id.in_(sorted(job_ids)), held_by(worker_id))
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(Job.id, Job.status)
        .execution_options(synchronize_session=False)).all())
    session.commit()
    return {job_id: str(status) for job_id, status in renewed.items()}


# --------------------------------------------------------------------------- metrics


def _metric_values(record: dict[str, Any]) -> dict[str, float]:
    """The record's scores: the fields the metric table gives a goal (min or max)."""
    return {
        k: float(v) for k, v in record.items()
        if k in METRICS and METRICS[k].goal is not None and isinstance(v, (int, float))
        and not isinstance(v, bool) and math.isfinite(v)
    }


def _monitor(spec: dict[str, Any] | None, values: dict[str, float]) -> str:
    es = ((spec or {}).get("training") or {}).get("early_stopping")
    if isinstance(es, dict) and es.get("metric"):
        return str(es["metric"])
    return "val_loss" if "val_loss" in values else "train_loss"


def summarize(records: Iterable[dict[str, Any]], previous: dict[str, Any] | None = None, *,
              spec: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Fold epoch records into the job's metrics summary: `{"best_epoch", "monitor",
    "final": {epoch, metrics...}, "best": {epoch, metrics...}, "best_per_metric":
    {metric: {"value", "epoch"}}}`.

    `final` and `best` are each one epoch's record: the last, and the best by `monitor`
    (`best["epoch"]` is `best_epoch`). `best_per_metric` is each metric's own best and the
    epoch that reached it, so different metrics' bests may come from different epochs."""
    summary = dict(previous) if previous else None
    if summary is not None and "best_per_metric" not in summary:
        # written before best_per_metric: its "best" held the per-metric bests, epochs unknown
        summary["best_per_metric"] = {k: {"value": v, "epoch": None}
                                      for k, v in (summary.get("best") or {}).items()}
        summary["best"] = {}
    for record in sorted(records, key=lambda r: r["epoch"]):
        values = _metric_values(record)
        if summary is None:
            summary = {"best_epoch": None, "monitor": _monitor(spec, values),
                       "best_value": None, "final": {}, "best": {}, "best_per_metric": {}}
        epoch = int(record["epoch"])
        if epoch >= int(summary["final"].get("epoch", 0)):
            summary["final"] = {"epoch": epoch, **values}
        per_metric = dict(summary["best_per_metric"])
        for k, v in values.items():
            old = per_metric.get(k)
            if is_better(k, v, None if old is None else old["value"]):
                per_metric[k] = {"value": v, "epoch": epoch}
        summary["best_per_metric"] = per_metric
        monitor = summary["monitor"]
        if monitor in values:
            v, old = values[monitor], summary.get("best_value")
            if is_better(monitor, v, old):
                summary["best_value"], summary["best_epoch"] = v, epoch
                summary["best"] = {"epoch": epoch, **values}
    return summary


def _insert_ignore(session: Session):  # type: ignore[no-untyped-def]
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(JobMetric).on_conflict_do_nothing(index_elements=["job_id", "epoch"])


def record_epochs(
    session: Session,
    job_id: str,
    records: Sequence[dict[str, Any]],
    *,
    checkpoint_uri: str | None = None,
    checkpoint_epoch: int | None = None,
    worker_id: str | None = None,
) -> bool:
    """Store per-epoch records (each with "epoch"), ignoring epochs already recorded (a
    resumed attempt repeats the epochs after its checkpoint), and move the job's progress
    and metrics summary forward, never back. With `checkpoint_uri`, record the checkpoint
    in the same transaction.

    With `worker_id`, write only while that worker holds the job (a fence: a worker whose
    lease lapsed and whose job another worker took over writes nothing) and return False
    otherwise. The check is a conditional UPDATE of the job row, so the row stays locked
    until this transaction commits and a concurrent take-over waits for it.
    """
    if worker_id is not None and not hold_job(session, job_id, worker_id):
        return False
    if not add_epochs(session, job_id, records, checkpoint_uri=checkpoint_uri,
                      checkpoint_epoch=checkpoint_epoch):
        return False
    session.commit()
    return True


def add_epochs(session: Session, job_id: str, records: Sequence[dict[str, Any]], *,
               checkpoint_uri: str | None = None, checkpoint_epoch: int | None = None) -> bool:
    """The writes of `record_epochs` in the caller's transaction, without its lease check
    or commit (the caller holds the job: store.locks.hold_job or hold_jobs); False when
    the job is gone."""
    records = [json_safe(r) for r in records]
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return False
    if records:
        now = utcnow()
        session.execute(_insert_ignore(session), [
            {"job_id": job_id, "epoch": int(r["epoch"]), "record": r, "created_at": now,
             "train_loss": r.get("train_loss")}
            for r in records
        ])
        new = [r for r in records if int(r["epoch"]) > job.epoch]
        if new:
            job.metrics_summary = summarize(new, job.metrics_summary, spec=job.spec)
            job.epoch = max(int(r["epoch"]) for r in new)
    if checkpoint_uri is not None:
        job.checkpoint_uri = checkpoint_uri
        job.checkpoint_epoch = checkpoint_epoch
    job.updated_at = utcnow()
    return True


def get_metrics(session: Session, job_id: str, *, since: int | None = None) -> list[dict[str, Any]]:
    """The job's epoch records in order (each with "epoch"); `since=N` gives epochs after N."""
    q = select(JobMetric.record).where(JobMetric.job_id == job_id)
    if since is not None:
        q = q.where(JobMetric.epoch > since)
    return list(session.scalars(q.order_by(JobMetric.epoch)))


# --------------------------------------------------------------------------- end states


def finish_job(
    session: Session,
    job_id: str,
    status: str,
    *,
    error: tuple[str, str] | dict[str, str] | None = None,
    weights: dict[str, Any] | None = None,
    summary_updates: dict[str, Any] | None = None,
    worker_id: str | None = None,
    now: datetime | None = None,
    commit: bool = True,
) -> bool:
    """Move a job to a terminal status; False when it is already terminal (or, with
    `worker_id`, when that worker no longer holds it). `commit=False`: the caller commits
    (the trials of a pack end in one transaction).

    `error`: (type, message) or {"type", "message"}. `weights`: any of `uri`, `bytes`,
    `sha256`, `pt_uri`, `pt_bytes`, `pt_sha256`.
    """
    if status not in TERMINAL:
        raise ValueError(f"finish_job: {status!r} is not a terminal status")
    now = now or utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now,
                              "lease_expires_at": None}
    if error is not None:
        etype, message = (error["type"], error["message"]) if isinstance(error, dict) else error
        values["error_type"], values["error_message"] = etype[:64], message
    if weights:
        for key, column in (("uri", "weights_uri"), ("bytes", "weights_bytes"),
                            ("sha256", "weights_sha256"), ("pt_uri", "weights_pt_uri"),
                            ("pt_bytes", "weights_pt_bytes"),
                            ("pt_sha256", "weights_pt_sha256")):
            if key in weights:
                values[column] = weights[key]
    q = update(Job).where(Job.id == job_id, Job.status.notin_(TERMINAL))
    if worker_id is not None:
        q = q.where(Job.worker_id == worker_id)
    done = session.execute(q.values(**values).execution_options(
        synchronize_session=False)).rowcount == 1
    if done and summary_updates:
        job = session.get(Job, job_id, populate_existing=True)
        if job is not None:
            job.metrics_summary = {**(job.metrics_summary or {}), **json_safe(summary_updates)}
    if done:
        session.flush()
        record_job_event(session, job_id, status)
    if commit:
        session.commit()
    return done


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a job: a queued one is cancelled at once, a running one becomes "cancelling"
    until its worker stops at the next batch boundary. Raises JobStateError once finished.
    The caller also sets the Redis cancel flag (messaging.live_events.set_cancel_flag)."""
    now = utcnow()
    changed = 0
    for from_status, to_status, extra in (
        (JobStatus.QUEUED, JobStatus.CANCELLED, {"finished_at": now}),
        (JobStatus.RUNNING, JobStatus.CANCELLING, {}),
    ):
        changed = session.execute(
            update(Job).where(Job.id == job.id, Job.status == from_status)
            .values(status=to_status, updated_at=now, **extra)
            .execution_options(synchronize_session=False)).rowcount
        if changed:
            if to_status == JobStatus.CANCELLED:
                record_job_event(session, job.id, to_status)
            break
    session.commit()
    session.refresh(job)
    if not changed and job.status in TERMINAL:
        raise JobStateError(f"job {job.id} has already finished ({job.status}); there is "
                            "nothing to cancel", status=job.status)
    return job


def delete_job(session: Session, job: Job) -> None:
    """Delete the job and its metrics (the caller removes its artifacts,
    `jobs/<id>/`). Raises JobStateError while it is queued, running or cancelling."""
    if job.status in ACTIVE:
        raise JobStateError(f"job {job.id} is {job.status}; cancel it and wait until it has "
                            "stopped before deleting it", status=job.status)
    session.execute(delete(JobMetric).where(JobMetric.job_id == job.id))
    session.execute(delete(Job).where(Job.id == job.id, Job.status.in_(TERMINAL)))
    session.commit()
